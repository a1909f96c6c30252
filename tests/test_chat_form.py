"""The chat-style form of MMLU questions: exam scaffolding removed, short, reproducible."""

import orjson

from octogate.router_model.training.chat_form import MAX_WORDS, chat_form
from tests.test_router_eval import DATA


def test_exam_scaffolding_becomes_a_plain_question():
    moral = ("For which of these two scenarios does the main character (who uses I/me/my) do something clearly "
             "morally wrong, according to ordinary moral standards in the US as of 2020? Scenario 1 | I pushed my "
             "sister down the stairs. Scenario 2 | I read a book.")
    assert chat_form(moral).startswith("is it wrong that I pushed my sister down the stairs")
    statement = "Statement 1 | Every group of order p is cyclic. Statement 2 | Every field is a ring."
    assert chat_form(statement).startswith("is it true that Every group of order p is cyclic")
    assert chat_form("Which of the following is always the longest?").startswith("what is always the longest")
    assert chat_form("Lewinsohn's model links ______ and depression.").startswith("lewinsohn's model links what and")
    history = "This question refers to the following information. The king granted a charter to the barons."
    assert chat_form(history).startswith("the king granted a charter")


def test_a_long_question_keeps_its_first_sentence_cut_to_the_word_limit():
    vignette = ("A 45-year-old man comes to the physician because of chest pain for two days. "
                "He has smoked for 20 years. Which of the following is the most likely diagnosis?")
    assert chat_form(vignette).rstrip(".") == "A 45-year-old man comes to the physician because of chest pain for two days"
    endless = " ".join(["word"] * 50) + "."
    assert len(chat_form(endless).split()) == MAX_WORDS
    # An abbreviation is no sentence end worth keeping: "Dr." alone would say nothing.
    assert chat_form("Dr. " + " ".join(["x"] * 30)).split()[:2] == ["dr.", "x"]


def test_every_kept_question_gets_a_short_reproducible_form():
    for name in ("mmlu_train.jsonl", "mmlu_dev.jsonl"):
        for line in (DATA / name).read_bytes().splitlines():
            question = orjson.loads(line)["question"]
            form = chat_form(question)
            assert form.strip() and len(form.split()) <= MAX_WORDS, (question, form)
            assert chat_form(question) == form
