"""A browser demo: load a model once, then stream continuations of typed prompts.

python -m src.app ckpt_path=<.ckpt>            # or hf_path=<dir>; serves http://127.0.0.1:7860
python -m src.app hf_path=<dir> host=0.0.0.0 port=8080

Greedy decoding is the "Greedy" checkbox: it ignores temperature, top-k and top-p, and
gives the same text as `python -m src.generate ... temperature=0`. Top-p 1.0 means no
nucleus filter. A bad prompt shows its error in the page; the app keeps serving.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from src.cli import command_name, parse_cli
from src.errors import UserError, exit_on_user_error
from src.extras import require_extra
from src.serving.inference import ModelSource, Sampling, TextGenerator

if TYPE_CHECKING:
    import gradio as gr

EXAMPLES = [
    "Once upon a time, in a small village by the sea,",
    "The three laws of thermodynamics are",
    "def fibonacci(n):",
    "Photosynthesis is the process by which",
]


@dataclass
class AppConfig(ModelSource):
    host: str = "127.0.0.1"
    port: int = 7860


def build_app(generator: TextGenerator) -> gr.Blocks:
    """The page: prompt and settings on the left, streamed text and speed on the right."""
    import gradio as gr  # an extra: main() checks for it before loading the model

    defaults = Sampling()

    def run(
        prompt: str,
        greedy: bool,
        temperature: float,
        max_new_tokens: float,
        top_k: float,
        top_p: float,
        seed: float | None,
    ) -> Iterator[tuple[str, str]]:
        try:
            sampling = Sampling(
                max_new_tokens=int(max_new_tokens),
                temperature=0.0 if greedy else temperature,
                top_k=int(top_k),
                top_p=None if top_p >= 1 else top_p,
                seed=None if seed is None else int(seed),
            )
            input_ids = generator.encode(prompt, sampling.max_new_tokens)
        except UserError as err:
            # A toast that catches the eye, and the same message kept in place of the speed line.
            gr.Warning(str(err))
            yield "", f"**Cannot generate:** {err}"
            return
        completion = generator.complete(input_ids, sampling)
        yield "", "generating..."
        for _ in completion:
            yield completion.text, "generating..."
        yield (
            completion.text,
            f"{completion.num_tokens} tokens in {completion.seconds:.2f} s, "
            f"{completion.tokens_per_second:.1f} tokens/s",
        )

    with gr.Blocks(title="SmolLM2 demo", analytics_enabled=False) as app:
        gr.Markdown(f"## SmolLM2 demo\n{generator.description}, context {generator.context} tokens")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=4, max_lines=12, elem_id="prompt")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                greedy = gr.Checkbox(label="Greedy (ignores temperature, top-k, top-p)", elem_id="greedy")
                temperature = gr.Slider(0.1, 2.0, defaults.temperature, step=0.05, label="Temperature")
                max_new_tokens = gr.Slider(
                    10, 500, defaults.max_new_tokens, step=1, label="Max new tokens", elem_id="max-new-tokens"
                )
                top_k = gr.Slider(1, 100, defaults.top_k, step=1, label="Top-k")
                top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Top-p (1.0 = off)")
                seed = gr.Number(defaults.seed, precision=0, label="Seed (empty = random)")
                gr.Examples(EXAMPLES, inputs=prompt)
            with gr.Column(scale=1):
                output = gr.Textbox(label="Output", lines=16, elem_id="output")
                status = gr.Markdown(elem_id="status")
        inputs = [prompt, greedy, temperature, max_new_tokens, top_k, top_p, seed]
        button.click(run, inputs, [output, status])
        prompt.submit(run, inputs, [output, status])
    return app


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(AppConfig, argv)
    require_extra("gradio", "app", command_name())  # before the model load, which can take a while
    generator = TextGenerator.load(cfg)
    print(f"loaded {generator.description}", file=sys.stderr)
    try:
        build_app(generator).queue().launch(server_name=cfg.host, server_port=cfg.port)
    except OSError as err:
        reason = str(err).split(". ")[0]  # the rest is Gradio's advice about its own launch() arguments
        raise UserError(f"cannot serve on {cfg.host}:{cfg.port} ({reason}); choose another port=") from None


if __name__ == "__main__":
    main()
