"""A table selection opens a result by its id: a stale row position never opens another result or crashes."""

from __future__ import annotations

from ui.selection import chosen_id, table_key


def test_a_selected_row_opens_that_rows_result() -> None:
    assert chosen_id(["a", "b", "c"], [2], "a") == ("c", None)


def test_a_row_past_the_end_of_a_shorter_list_does_not_crash_and_keeps_the_open_result() -> None:
    assert chosen_id(["a", "b"], [9], "b") == ("b", None)


def test_the_open_result_stays_open_after_the_list_changes_around_it() -> None:
    assert chosen_id(["x", "b", "y"], [], "b") == ("b", None)


def test_a_result_filtered_out_is_replaced_by_the_first_with_a_note_saying_so() -> None:
    opened, note = chosen_id(["x", "y"], [], "b")
    assert opened == "x" and "not in this list" in note


def test_moving_on_after_a_review_opens_the_first_without_a_note() -> None:
    assert chosen_id(["x", "y"], [], None) == ("x", None)


def test_each_distinct_list_gets_its_own_table_widget() -> None:
    assert table_key("t", ["a", "b"]) == table_key("t", ["a", "b"])
    assert table_key("t", ["a", "b"]) != table_key("t", ["b", "a"]) != table_key("t", ["a"])
