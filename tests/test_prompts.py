import pytest

from mcgrpo.prompts import INSTRUCTIONS, VARIANTS, build_messages, format_question, render_prompt


def test_variants_and_question_layout(records):
    assert set(VARIANTS) >= {"direct", "cot"}
    text = format_question(records[0])
    assert text.startswith("Passage:\n") and f"Question: {records[0]['question']}" in text
    assert "\nA) " in text and "\nD) " in text and "E) " not in text


def test_single_user_turn_with_instructions(records):
    msgs = build_messages(records[0], "cot")
    assert [m["role"] for m in msgs] == ["user"]  # Gemma has no system role
    assert msgs[0]["content"].startswith(INSTRUCTIONS["cot"]) and "<answer>" in msgs[0]["content"]
    with pytest.raises(KeyError, match="unknown prompt variant"):
        build_messages(records[0], "nope")


def test_no_passage_no_passage_header():
    assert not format_question({"context": "", "question": "Q?", "options": ["a", "b"]}).startswith("Passage")


def test_gemma_chat_template(tiny_model_dir, records):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = render_prompt(tok, records[0], "direct")
    assert prompt.startswith("<bos><start_of_turn>user\n" + INSTRUCTIONS["direct"])
    assert prompt.endswith("<end_of_turn>\n<start_of_turn>model\n")
    # a system message is folded into the first user turn, as Gemma's own template does
    folded = tok.apply_chat_template([{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"}],
                                     tokenize=False, add_generation_prompt=True)
    assert folded == "<bos><start_of_turn>user\nSYS\n\nhi<end_of_turn>\n<start_of_turn>model\n"


def test_completion_option_layout_shots_and_cue(records):
    # options unlettered, shots answered with the right option's text, and a cue that opens the answer's bullet
    from mcgrpo.prompts import completion_text

    shot, question = records[0], records[1]
    text = completion_text(question, "completion_option", [shot])
    right = shot["options"]["ABCD".index(shot["answer"])]
    assert f"Options:\n- {question['options'][0]}\n" in text and "\nA. " not in text
    assert f"Answer:\n- {right}\n\nArticle: " in text
    assert text.endswith(f"- {question['options'][-1]}\nAnswer:\n-")
    lettered = completion_text(question, "completion_direct", [shot])
    assert f"Answer: {shot['answer']}\n\n" in lettered and lettered.endswith("\nAnswer:")


def test_completion_open_shows_no_options_and_begins_a_fill_in_question():
    # no options listed; a fill-in question is begun, not asked: its answer continues the words before the blank
    from mcgrpo.loglik import loglik_context
    from mcgrpo.prompts import blank_stem, completion_text

    asked = {"context": "Tom swam.", "question": "What did Tom do?", "options": ["swam", "ran"], "answer": "A"}
    blank = {"context": "Ann ran.", "question": "Ann  _  after school.", "options": ["swam", "ran"], "answer": "B"}
    assert completion_text(asked, "completion_open") == loglik_context(asked)  # the log-likelihood's own prompt
    text = completion_text(blank, "completion_open", [asked, blank])
    assert text == ("Article: Tom swam.\n\nQuestion: What did Tom do?\nAnswer: swam\n\n"
                    "Article: Ann ran.\n\nAnn ran\n\nArticle: Ann ran.\n\nAnn")
    assert blank_stem("_ is true.") == "" and blank_stem("Why?") == ""
    first_blank = {**blank, "question": "_ is what Ann did."}
    assert completion_text(first_blank, "completion_open").endswith("Question: _ is what Ann did.\nAnswer:")


def test_one_line_variants_stop_at_a_newline(tiny_model_dir):
    from transformers import AutoTokenizer

    from mcgrpo.prompts import stop_token_ids

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    one_line = stop_token_ids(tok, "completion_option")
    assert one_line and one_line == stop_token_ids(tok, "completion_direct") == stop_token_ids(tok, "completion_open")
    assert all("\n" in tok.decode([i]) for i in one_line) and set(stop_token_ids(tok, "completion_cot")) < set(one_line)
    assert stop_token_ids(tok, "cot") == []
