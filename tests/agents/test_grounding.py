"""The repairs and grounding helpers the graph applies to a small model's actions."""

from hypothesis import given
from hypothesis import strategies as st

from strop.agents.grounding import (
    Passage,
    asked_kinds,
    checked_answer,
    clean_answer,
    cut_loop,
    foreign,
    loops,
    names_in,
    parse_passages,
    personal_question,
    plain_text,
    ranked_sentences,
    rare_names,
    sentences,
    span_choices,
    supporting,
    usable_query,
)

NOTE = Passage("8ca0dbec", 0.8, "The back door of the lab opens with code 5820. The bike shed code is 1193.")
OTHER = Passage("e99dfe53", 0.4, "Visitor parking is on level -2 of the Canal Street garage.")


def test_a_repeated_phrase_is_cut_before_it_repeats():
    text = "The gym is open. The number of gyms in Japan is 12. The number of gyms in Japan is 12. The number"
    assert cut_loop(text) == "The gym is open. The number of gyms in Japan is 12."


def test_a_run_of_repeated_characters_keeps_one_copy():
    assert cut_loop("the 2014191919191919191919191919 protest") == "the 201419"


def test_text_that_does_not_repeat_is_left_alone():
    text = "Dracula is an 1897 Gothic horror novel by Irish author Bram Stoker."
    assert cut_loop(text) == text and not loops(text)


@given(st.text(max_size=300))
def test_cutting_a_loop_never_lengthens_and_is_stable(text):
    cut = cut_loop(text)
    assert len(cut) <= len(text) and text.startswith(cut.rstrip(" ,;:-")[:len(cut)])
    assert cut_loop(cut) == cut or len(cut_loop(cut)) < len(cut)


def test_a_degenerate_query_becomes_the_question():
    question = "What time does the daily standup start?"
    looping = "time of day of the week of the day of the month of the month of the month of the month"
    assert usable_query(looping, question, 200) == question
    assert usable_query("Dracula author", question, 200) == question  # shares nothing with the question
    assert usable_query("...", question, 200) == question
    assert usable_query("daily standup start time", question, 200) == "daily standup start time"


def test_a_long_question_as_query_is_clipped_to_the_bound():
    question = "Where " + "is the very long question " * 20 + "?"
    assert len(usable_query("", question, 200)) <= 200


def test_sources_are_the_passages_that_hold_the_answer():
    assert supporting("1193", [OTHER, NOTE]) == [NOTE]
    assert supporting("The bike shed code is 1193.", [OTHER, NOTE]) == [NOTE]
    assert supporting("Paris", [OTHER, NOTE]) == []
    assert supporting("", [NOTE]) == []


def test_passages_are_read_back_from_a_search_result():
    result = f"[{NOTE.id}] (0.80) {NOTE.text}\n[{OTHER.id}] (0.40) {OTHER.text}"
    assert parse_passages(result) == [NOTE, OTHER]
    assert parse_passages("No passages found.") == []


def test_markup_is_stripped_from_passages():
    html = "<p>The <b>lead</b> is <a href='x'>Ada&nbsp;Okafor</a>.</p>"
    assert plain_text(html) == "The lead is Ada Okafor."
    assert plain_text("## Team\n**Lead**: [Ada Okafor](https://example.org)") == "Team Lead: Ada Okafor"


def test_answers_are_one_bounded_line_without_their_loop():
    assert clean_answer("Answer: 5820\n5820 5820 5820 5820 5820", 300) == "5820"
    assert len(clean_answer("word " * 200, 300)) <= 300


def test_span_choices_are_short_spans_of_the_passages():
    spans = span_choices([NOTE], max_words=2)
    assert "5820" in spans and "bike shed" in spans and all(len(s.split()) <= 2 for s in spans)


def test_focus_keeps_the_sentences_that_share_most_words_with_the_question_in_passage_order():
    from strop.agents.grounding import focus

    game = Passage("aaaaaaaa", 0.9, "Super Bowl 50 was a football game. The Broncos won 24-10. "
                                    "The game was played at Levi's Stadium in Santa Clara.")
    other = Passage("bbbbbbbb", 0.5, "Manning threw no touchdowns. He was sacked twice.")
    kept = focus([game, other], "Where was the Super Bowl 50 game played?", keep=2)
    assert [p.text for p in kept] == ["Super Bowl 50 was a football game.",
                                      "The game was played at Levi's Stadium in Santa Clara."]
    assert {p.id for p in kept} == {"aaaaaaaa"}


def test_a_note_of_several_lines_is_read_back_whole():
    from strop.tools.toolkit import passage_line

    note = "# Project\n\n<div>Strop ships on <i>14 March</i>.</div>\n\n**Lead:** [Ada Okafor](https://example.org)"
    (passage,) = parse_passages(passage_line("21a919e2" + "0" * 24, 0.71, note))
    assert passage.id == "21a919e2" and "Ada Okafor" in passage.text
    assert plain_text(passage.text) == "Project Strop ships on 14 March. Lead: Ada Okafor"


def test_a_title_or_an_initial_ends_no_sentence():
    text = "Dentist appointment with Dr. Halvorsen on 9 April. Rent is paid to Mr. Brennan. J. Smith wrote it."
    assert sentences(text) == ["Dentist appointment with Dr. Halvorsen on 9 April.", "Rent is paid to Mr. Brennan.",
                               "J. Smith wrote it."]
    assert sentences("It costs 2.1 percent. Done.") == ["It costs 2.1 percent.", "Done."]


def test_the_kind_of_span_a_question_asks_for():
    assert asked_kinds("What time does the daily standup start?") == ("time",)
    assert asked_kinds("When does my passport expire?") == ("date", "time")
    assert asked_kinds("Which code opens the bike shed?") == ("number",)
    assert asked_kinds("How much is the rent?") == ("number",)
    assert asked_kinds("Who is the lead of the Strop project?") == ("name",)
    assert asked_kinds("What colour is the car?") == ()


def test_an_answer_without_the_best_sentences_span_is_replaced_by_that_sentence():
    question = "Which code opens the bike shed?"
    ranked = ranked_sentences([OTHER, NOTE], question)
    assert ranked[0].passage.text == "The bike shed code is 1193."
    assert checked_answer("The code 5820 opens the bike shed.", question, ranked) == "The bike shed code is 1193."
    assert checked_answer("1193", question, ranked) == "1193"


def test_an_answer_is_kept_when_no_sentence_stands_out_or_the_kind_is_unknown():
    tie = [Passage("1", 0.5, "Guests stay at the Hotel Ribeira. The offsite dinner is in Porto.")]
    assert checked_answer("Casa Lopes", "Where is the offsite?", ranked_sentences(tie, "Where is the offsite?")) \
        == "Casa Lopes"  # "where" is not a kind a pattern tells apart
    two = [Passage("1", 0.5, "The bike shed code is 1193. The bike shed code was 5820.")]
    question = "Which code opens the bike shed?"
    assert checked_answer("5820", question, ranked_sentences(two, question)) == "5820"  # a tie: the model's pick
    months = [Passage("1", 0.5, "The contract with Nordlicht renews on 30 June.")]
    question = "Who is our contact at Nordlicht?"
    assert checked_answer("Sofia Lindqvist", question, ranked_sentences(months, question)) == "Sofia Lindqvist"


def test_names_that_are_no_english_word():
    assert rare_names("Wer leitet das Projekt Strop?") == ["Projekt", "Strop"]
    assert rare_names("Who is our contact at Nordlicht Software?") == ["Nordlicht"]
    assert rare_names("What is the capital of France?") == []  # general knowledge: an English word
    assert rare_names("What is 674 plus 826?") == []  # numbers are no names
    assert names_in([NOTE, Passage("1", 0.5, "Strop ships on 14 March.")], ["Projekt", "Strop"]) == ["Strop"]


def test_questions_about_the_users_own_things():
    assert personal_question("What is my gym membership number?")
    assert personal_question("Wie lautet meine Zimmernummer?")
    assert personal_question("What is the door code of the lab?")
    assert not personal_question("Calculate the future value of my portfolio if I invest $5000?")  # a computation
    assert not personal_question("What is the capital of France?")
    assert not personal_question("Get me data on rainfall in my town.")  # not a question


def test_an_answer_that_only_repeats_the_question_becomes_the_sentences_read():
    note = Passage("1", 0.5, "Strop is the codename of our team project. It ships on 14 March. The lead is Ada Okafor.")
    question = "Which team project is Strop?"
    ranked = ranked_sentences([note], question)
    assert checked_answer("The team project Strop.", question, ranked) == note.text
    assert checked_answer("Its codename.", question, ranked) == "Its codename."
    asked = "What is the guest wifi network called in Leeds?"
    wifi = [Passage("2", 0.5, "Guest wifi in Leeds: network name LeedsGuest.")]
    kept = "It is called LeedsGuest."
    assert checked_answer(kept, asked, ranked_sentences(wifi, asked)) == kept


def test_a_question_in_another_language_is_answered_with_the_sentences_read():
    note = Passage("1", 0.5, "Strop is the codename of our team project. The lead is Ada Okafor.")
    question = "¿Quién es el responsable del proyecto Strop?"
    assert checked_answer("El proyecto es la cabeza.", question, ranked_sentences([note], question)) == note.text
    assert not foreign("Who is the lead of the Strop project?") and foreign(question)


def test_a_best_sentence_sharing_one_word_with_the_question_does_not_overrule_the_answer():
    bike = [Passage("1", 0.5, "My bike has frame number WV4471902. It was bought for 640 euros.")]
    question = "How much did the bike cost?"
    assert checked_answer("640 euros", question, ranked_sentences(bike, question)) == "640 euros"
