"""`mcgrpo chat`: a local Gradio page to talk to the fine-tuned model, the base model, or both side by side.

Two tabs: free chat (multi-turn, streamed) and multiple choice (paste a passage, a question and
options; each model's reasoning and answer are shown apart and scored against an optional gold
letter with the same reward the pipeline trains on). The server binds to 127.0.0.1 unless told
otherwise, and input longer than --max-input-chars is refused before it reaches a model.
"""

import functools
import os
import re
from threading import Thread

from mcgrpo.errors import UserError
from mcgrpo.patches import eager_attention_for_generation
from mcgrpo.prompts import build_messages
from mcgrpo.rewards import LETTERS, extract_answer, reasoning_text, score_completion

MODELS = ("fine-tuned", "base")
CHOICES = {"both": MODELS, "fine-tuned": ("fine-tuned",), "base": ("base",)}
DEFAULT_MAX_INPUT_CHARS = 12000


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, final answer) of a (possibly still streaming) reply.

    With <reasoning>/<answer> tags: what is inside each. Without: no reasoning, the whole text is the answer.
    """
    answer = re.search(r"<answer>(.*?)(?:</answer>|$)", text, re.S)
    if "<reasoning>" in text or answer:
        return (reasoning_text(text) if "<reasoning>" in text else "", answer.group(1).strip() if answer else "")
    return "", text.strip()


def check_length(max_chars: int, **fields: str) -> None:
    """Refuse over-long input before it reaches a model (a pasted book would stall the server)."""
    total = sum(len(v or "") for v in fields.values())
    if total > max_chars:
        raise UserError(f"input is {total:,} characters; the limit is {max_chars:,} (start with --max-input-chars "
                        "to change it)")


def parse_options(text: str) -> list[str]:
    """One option per line; a leading "A)", "B." or "(C)" is dropped."""
    options = [re.sub(r"^\s*\(?[A-Ja-j][).:]\s+", "", line).strip() for line in (text or "").splitlines()]
    options = [o for o in options if o]
    if not 2 <= len(options) <= len(LETTERS):
        raise UserError(f"give 2 to {len(LETTERS)} options, one per line (got {len(options)})")
    return options


def stream(model, tokenizer, messages: list[dict], max_new_tokens: int, temperature: float):
    """Yield the reply text as it grows, generated in a background thread."""
    import torch
    from transformers import TextIteratorStreamer

    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = {k: v.to(model.device) for k, v in ids.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    kwargs = {**ids, "max_new_tokens": max_new_tokens, "streamer": streamer, "top_k": None,
              "pad_token_id": tokenizer.pad_token_id, **sampling}

    def run():
        with torch.inference_mode(), eager_attention_for_generation(model):  # see there: SDPA's cached decode
            model.generate(**kwargs)

    thread = Thread(target=run, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    thread.join()


def load_models(model_params, adapter_dir, which: str) -> dict:
    """{label: (model, tokenizer)} for the requested side(s); the adapter is merged into its copy."""
    from pathlib import Path

    from mcgrpo.modeling import is_whole_model, load_model

    models = {}
    for label in CHOICES[which]:
        if label == "fine-tuned" and not ((Path(adapter_dir) / "adapter_config.json").exists()
                                          or is_whole_model(adapter_dir)):
            raise UserError(f"{adapter_dir}: no adapter here; train one (dvc repro train), pass --adapter, "
                            "or chat with --model base")
        model, tokenizer, _ = load_model(model_params, adapter_dir=adapter_dir if label == "fine-tuned" else None)
        models[label] = (model, tokenizer)
    return models


def _guarded(fn):
    """Turn a UserError into the red toast Gradio shows, with the same message the CLI would print."""
    import gradio as gr

    def wrapped(*args):
        try:
            yield from fn(*args)
        except UserError as err:
            raise gr.Error(str(err)) from None
    return wrapped


def chat_replies(models: dict, max_input_chars: int, max_new_tokens: int, message, temperature, *histories):
    """Each model's streamed reply to the message in its own history, one model after the other (a CPU cannot
    run two at once anyway): yields (cleared message box, histories, reasoning boxes, answer boxes)."""
    check_length(max_input_chars, message=message)
    histories = [list(h or []) + [{"role": "user", "content": message}] for h in histories]
    outputs = [h + [{"role": "assistant", "content": ""}] for h in histories]
    reasoning, answers = [""] * len(models), [""] * len(models)
    for i, (model, tokenizer) in enumerate(models.values()):
        for text in stream(model, tokenizer, histories[i], max_new_tokens, temperature):
            outputs[i][-1]["content"] = text
            reasoning[i], answers[i] = split_reasoning(text)
            yield "", *outputs, *reasoning, *answers


def multiple_choice_replies(models: dict, reward_weights: dict, max_input_chars: int, max_new_tokens: int,
                            passage, question, options_text, gold, variant, temperature):
    """Each model's streamed reasoning on one question, then its verdict: yields (reasoning boxes, answer boxes)."""
    check_length(max_input_chars, passage=passage, question=question, options=options_text)
    if not (question or "").strip():
        raise UserError("the question is empty")
    options = parse_options(options_text)
    gold = (gold or "").strip().upper()
    if gold and gold not in LETTERS[:len(options)]:
        raise UserError(f"the correct answer must be one of {', '.join(LETTERS[:len(options)])} (or left empty)")
    record = {"context": passage or "", "question": question, "options": options}
    reasoning, answers = [""] * len(models), [""] * len(models)
    for i, (model, tokenizer) in enumerate(models.values()):
        for text in stream(model, tokenizer, build_messages(record, variant), max_new_tokens, temperature):
            # the reasoning, or the raw reply when the model used no tags (so a miss can be read)
            reasoning[i] = split_reasoning(text)[0] or text
            answers[i] = "…"
            yield *reasoning, *answers
        answers[i] = verdict(text, options, gold, variant, reward_weights)
        yield *reasoning, *answers


def _multiple_choice_tab(gr, labels: list[str], temperature, replies) -> None:
    with gr.Tab("Multiple choice"):
        with gr.Row():
            with gr.Column():
                passage = gr.Textbox(label="Passage", lines=8, elem_id="passage")
                question = gr.Textbox(label="Question", elem_id="question")
                options = gr.Textbox(label="Options, one per line", lines=4, elem_id="options")
                with gr.Row():
                    gold = gr.Textbox(label="Correct letter (optional, to score)", max_lines=1, elem_id="gold")
                    variant = gr.Radio(["cot", "direct"], value="cot", label="prompt")
                ask = gr.Button("Answer", variant="primary", elem_id="ask")
            reasoning, answer = [], []
            for label in labels:
                with gr.Column():
                    gr.Markdown(f"### {label}")
                    reasoning.append(gr.Textbox(label=f"{label}: reasoning", lines=8, elem_id=f"mc-reasoning-{label}"))
                    answer.append(gr.Textbox(label=f"{label}: answer", elem_id=f"mc-answer-{label}"))
        ask.click(_guarded(replies), [passage, question, options, gold, variant, temperature], reasoning + answer)


def _chat_tab(gr, labels: list[str], temperature, replies) -> None:
    with gr.Tab("Chat"):
        histories, reasoning, answer = [], [], []
        with gr.Row():
            for label in labels:
                with gr.Column():
                    histories.append(gr.Chatbot(label=label, height=320, elem_id=f"chat-{label}"))
                    reasoning.append(gr.Textbox(label=f"{label}: reasoning", lines=3, elem_id=f"chat-reasoning-{label}"))
                    answer.append(gr.Textbox(label=f"{label}: final answer", elem_id=f"chat-answer-{label}"))
        message = gr.Textbox(label="Message", placeholder="Ask something, then press Enter", elem_id="message")
        message.submit(_guarded(replies), [message, temperature, *histories], [message, *histories, *reasoning, *answer])
        gr.Button("Clear").click(lambda: [[] for _ in labels] + [""] * 2 * len(labels), None,
                                 [*histories, *reasoning, *answer])


def build_app(models: dict, reward_weights: dict, *, max_input_chars: int = DEFAULT_MAX_INPUT_CHARS,
              max_new_tokens: int = 512, title: str = "mcgrpo chat"):
    """The Gradio Blocks app over already-loaded models ({label: (model, tokenizer)})."""
    import gradio as gr

    labels = list(models)
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\nModels: {', '.join(f'**{label}**' for label in labels)}. Everything runs on this "
                    f"machine; input is limited to {max_input_chars:,} characters.")
        temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.1, label="temperature (0 = greedy)")
        _multiple_choice_tab(gr, labels, temperature, functools.partial(
            multiple_choice_replies, models, reward_weights, max_input_chars, max_new_tokens))
        _chat_tab(gr, labels, temperature, functools.partial(chat_replies, models, max_input_chars, max_new_tokens))
    return app


def offline_theme():
    """Gradio's default look with system fonts: the default theme fetches Google Fonts, and the page must
    render offline."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def verdict(text: str, options: list[str], gold: str, variant: str, reward_weights: dict) -> str:
    """The answer a reply declares, its option text, and (with a gold letter) whether it is right and its reward."""
    letter = extract_answer(text, len(options))
    shown = f"{letter}) {options[LETTERS.index(letter)]}" if letter else "no answer found"
    if not gold:
        return shown
    score = score_completion(text, gold, len(options), variant, reward_weights, options)
    return f"{shown} | {'correct' if score['correct'] else 'wrong'} (gold {gold}), reward {score['reward']:.2f}"


def serve(model_params, adapter_dir, reward_weights: dict, which: str = "both", host: str = "127.0.0.1",
          port: int = 7860, max_input_chars: int = DEFAULT_MAX_INPUT_CHARS, max_new_tokens: int = 512) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    models = load_models(model_params, adapter_dir, which)
    app = build_app(models, reward_weights, max_input_chars=max_input_chars, max_new_tokens=max_new_tokens,
                    title=f"mcgrpo chat: {model_params.name}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this machine's port {port} can use the models")
    # ssr_mode off: server-side rendering would start a Node.js server beside this one.
    app.queue(default_concurrency_limit=1).launch(server_name=host, server_port=port, share=False, inbrowser=False,
                                                  show_error=True, ssr_mode=False, theme=offline_theme())
