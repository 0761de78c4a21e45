"""The brackets inline NER drafts guess (evaluate/mention_guess.py): runs of capitalized words, not the word
that opens a sentence alone, nothing in text whose capitals say nothing."""

from __future__ import annotations

from tasktune.evaluate.mention_guess import guess_mentions, says_nothing

TEXT = "Fans in Lake Geneva cheered for Hana Kobayashi-Ward on Friday."


def test_the_next_run_of_capitalized_words_is_guessed_as_a_mention_up_to_its_label():
    assert guess_mentions(TEXT, 0, False)[0] == "Fans in [Lake Geneva|"
    assert guess_mentions(TEXT, 7, False)[0] == " [Lake Geneva|"
    after = TEXT.index(" cheered")
    assert guess_mentions(TEXT, after, False) == (" cheered for [Hana Kobayashi-Ward|", "Hana Kobayashi-Ward")
    # inside a mention the model opened, the run goes on to its end
    assert guess_mentions(TEXT, TEXT.index(" Geneva"), True) == (" Geneva|", None)
    assert guess_mentions(TEXT, TEXT.index(" cheered"), True) == ("|", None)  # the run ended: close it here


def test_a_sentence_opens_a_mention_only_with_a_run_of_two_words_and_the_plain_rest_ends_the_text():
    assert guess_mentions("The museum was closed. It rained.", 0, False)[0] == "The museum was closed. It rained."
    assert guess_mentions("It was fine. Nora Quinn came.", 0, False)[0] == "It was fine. [Nora Quinn|"
    assert guess_mentions("Toronto is big", 0, False)[0] == "Toronto is big"
    assert guess_mentions("He saw Toronto", 0, False)[0] == "He saw [Toronto|"


def test_runs_the_model_declined_are_copied_plainly():
    declined = {"Lake Geneva", "Friday"}
    assert guess_mentions(TEXT, 0, False, declined) == ("Fans in Lake Geneva cheered for [Hana Kobayashi-Ward|",
                                                        "Hana Kobayashi-Ward")
    assert guess_mentions(TEXT, TEXT.index(" on"), False, declined) == (" on Friday.", None)
    assert guess_mentions(TEXT, TEXT.index(" on"), False, {"Geneva"}) == (" on [Friday|", "Friday")


def test_capitals_say_nothing_without_any_or_in_a_headline():
    assert says_nothing("李雷到了北京")
    assert says_nothing("SOCCER - JAPAN GET LUCKY WIN , CHINA IN SURPRISE DEFEAT .")
    assert not says_nothing("Japan won in Tokyo on Sunday.")
