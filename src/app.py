"""A browser demo: load a model once, then stream continuations of typed prompts.

python -m src.app ckpt_path=<.ckpt>            # or hf_path=<dir>; serves http://127.0.0.1:7860
python -m src.app hf_path=<dir> host=0.0.0.0 port=8080    # port=0: a free port, printed at start

Greedy decoding is the "Greedy" checkbox: it ignores temperature, top-k and top-p, and
gives the same text as `python -m src.generate ... temperature=0`. Top-p 1.0 means no
nucleus filter. "Chat" sends the prompt as one user turn of the tokenizer's chat template
(`src.generate ... chat=true`). A bad prompt or setting shows its error in the page; the
app keeps serving.
"""

from __future__ import annotations

import logging
import math
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from src.cli import command_name, parse_cli
from src.errors import UserError, exit_on_user_error, first_line
from src.extras import require_extra
from src.serving.inference import ModelSource, Sampling, TextGenerator, count_tokens

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger(__name__)

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

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UserError(f"port={self.port}: use a TCP port in 0..65535 (0 picks a free one)")


def number(label: str, value: float | None) -> float:
    """A slider's or box's value as sent: the browser's checks do not stop NaN, inf or an empty box."""
    if (
        value is None
        or isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
    ):
        raise UserError(f"{label} is {value!r}; enter a finite number")
    return value


def integer(label: str, value: float | None) -> int:
    """A count or seed as sent: 0.5 is refused, not truncated to 0 (a client can send any number)."""
    if number(label, value) != int(value):
        raise UserError(f"{label} is {value!r}; enter a whole number")
    return int(value)


def read_sampling(
    greedy: bool, temperature: float, max_new_tokens: float, top_k: float, top_p: float, seed: float | None
) -> Sampling:
    """The page's settings, checked as `Sampling` checks the command line's; only top-p 1.0
    (the slider's end) stands for the command line's null."""
    top_p = number("top-p", top_p)
    return Sampling(
        max_new_tokens=integer("max new tokens", max_new_tokens),
        temperature=0.0 if greedy else number("temperature", temperature),
        top_k=integer("top-k", top_k),
        top_p=None if top_p == 1 else top_p,
        seed=None if seed is None else integer("seed", seed),
    )


def reply(generator: TextGenerator, prompt: str | None, chat: bool, *settings) -> Iterator[tuple[str, str]]:
    """(output, status) as the text streams; every path ends on a status that is not "generating...".
    A client (gradio_client) may send no prompt at all: that is the empty prompt."""
    import gradio as gr

    text = ""
    try:
        sampling = read_sampling(*settings)
        input_ids = generator.encode(prompt or "", sampling.max_new_tokens, chat)
        completion = generator.complete(input_ids, sampling)
        yield text, "generating..."
        for _ in completion:
            text = completion.text
            yield text, "generating..."
    except UserError as err:
        # A toast that catches the eye, and the same message kept in place of the speed line.
        gr.Warning(str(err))
        yield text, f"**Cannot generate:** {err}"
        return
    except Exception as err:  # the app keeps serving; the traceback goes to the server's log
        log.exception("generation failed")
        gr.Warning(first_line(err))
        yield text, f"**Generation failed:** {first_line(err)}"
        return
    yield (
        completion.text,
        f"{count_tokens(completion.num_tokens)} in {completion.seconds:.2f} s, "
        f"{completion.tokens_per_second:.1f} tokens/s",
    )


def build_app(generator: TextGenerator) -> gr.Blocks:
    """The page: prompt and settings on the left, streamed text and speed on the right."""
    import gradio as gr  # an extra: main() checks for it before loading the model

    defaults = Sampling()

    def run(
        prompt: str | None,
        chat: bool,
        greedy: bool,
        temperature: float,
        max_new_tokens: float,
        top_k: float,
        top_p: float,
        seed: float | None,
    ) -> Iterator[tuple[str, str]]:
        yield from reply(generator, prompt, chat, greedy, temperature, max_new_tokens, top_k, top_p, seed)

    with gr.Blocks(title="SmolLM2 demo", analytics_enabled=False) as app:
        gr.Markdown(f"## SmolLM2 demo\n{generator.description}, context {generator.context} tokens")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(
                    label="Prompt",
                    lines=4,
                    max_lines=12,
                    max_length=generator.max_prompt_chars,
                    elem_id="prompt",
                )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                chat = gr.Checkbox(
                    label="Chat (the prompt is a user turn in the tokenizer's chat template)", elem_id="chat"
                )
                greedy = gr.Checkbox(label="Greedy (ignores temperature, top-k, top-p)", elem_id="greedy")
                temperature = gr.Slider(0.1, 2.0, defaults.temperature, step=0.05, label="Temperature")
                max_new_tokens = gr.Slider(
                    10, 500, defaults.max_new_tokens, step=1, label="Max new tokens", elem_id="max-new-tokens"
                )
                top_k = gr.Slider(1, 100, defaults.top_k, step=1, label="Top-k")
                top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Top-p (1.0 = off)")
                seed = gr.Number(
                    defaults.seed, precision=0, label="Seed (empty = random, else 0 to 2**64 - 1)"
                )
                gr.Examples(EXAMPLES, inputs=prompt)
            with gr.Column(scale=1):
                output = gr.Textbox(label="Output", lines=16, elem_id="output")
                status = gr.Markdown(elem_id="status")
        inputs = [prompt, chat, greedy, temperature, max_new_tokens, top_k, top_p, seed]
        button.click(run, inputs, [output, status])
        prompt.submit(run, inputs, [output, status])
    return app


def check_can_serve(host: str, port: int) -> int:
    """The port to serve on: `port`, or for 0 one the system picks free (Gradio cannot serve on
    0 itself). A port already taken (or a host this machine is not) is refused before the model
    loads; Gradio would find it only after. `main` still catches the port taken in between."""
    try:
        with socket.create_server((host, port)) as server:
            return server.getsockname()[1]
    except OSError as err:
        fix = "choose another port= or host="
        raise UserError(f"cannot serve on {host}:{port} ({err.strerror}); {fix}") from None


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(AppConfig, argv)
    require_extra("gradio", "app", command_name())  # before the model load, which can take a while
    port = check_can_serve(cfg.host, cfg.port)
    generator = TextGenerator.load(cfg)
    print(f"loaded {generator.description}", file=sys.stderr)
    app = build_app(generator).queue()
    try:
        app.launch(server_name=cfg.host, server_port=port, prevent_thread_lock=True)
    except OSError as err:
        reason = str(err).split(". ")[0]  # the rest is Gradio's advice about its own launch() arguments
        raise UserError(f"cannot serve on {cfg.host}:{port} ({reason}); choose another port=") from None
    print(f"serving on http://{cfg.host}:{port}", file=sys.stderr, flush=True)
    serve_until_interrupted(app)


def serve_until_interrupted(app: gr.Blocks) -> None:
    """Serve until Ctrl-C, which ends the command as every other (`exit_on_user_error`: 130);
    Gradio's own wait would catch it and return."""
    try:
        while app.is_running:
            time.sleep(0.1)
    except KeyboardInterrupt:
        app.close()
        raise


if __name__ == "__main__":
    main()
