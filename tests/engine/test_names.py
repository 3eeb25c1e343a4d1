"""Names that become path components (persisting/engine/names.py)."""

from __future__ import annotations

import os
import pickle

import pytest

from persisting.engine import Table
from persisting.engine.names import check_name
from persisting.errors import InvalidNameError


@pytest.mark.parametrize(
    "name",
    [
        "a", "topic", "my-topic_2", "v1.0", "checkpoint.step-100", "..hidden", "a..b", "...", ".cfg",
        "UPPER", "名前", "émoji-🙂", "with space", "a" * 255, "é" * 127,
    ],
)
def test_accepts_normal_names(name: str) -> None:
    assert check_name(name) is name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        (".", "relative"),
        ("..", "relative"),
        ("a/b", "separator"),
        ("/abs", "separator"),
        ("../escape", "separator"),
        ("a\\b", "separator"),
        ("..\\escape", "separator"),
        ("a\x00b", "control"),
        ("\x00", "control"),
        ("a\nb", "control"),
        ("a\tb", "control"),
        ("a\rb", "control"),
        ("\x1b[31m", "control"),
        ("\x1f", "control"),
        ("a" * 256, "longer"),
        ("é" * 128, "longer"),  # 128 characters, 256 bytes
    ],
)
def test_refuses_names_that_could_escape(name: str, problem: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        check_name(name)
    message = str(info.value)
    assert repr(name) in message
    assert problem in message
    assert info.value.name == name  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [None, 5, b"topic", ["a"], 1.5], ids=repr)
def test_refuses_non_str_naming_the_value(value: object) -> None:
    with pytest.raises(InvalidNameError) as info:
        check_name(value)
    assert repr(value) in str(info.value)
    assert type(value).__name__ in str(info.value)


def test_message_names_what_kind_of_name() -> None:
    with pytest.raises(InvalidNameError) as info:
        check_name("a/b", what="topic")
    assert str(info.value).startswith("topic 'a/b'")
    with pytest.raises(InvalidNameError) as info:
        check_name(3, what="tag")
    assert str(info.value).startswith("tag must be a str")


def test_invalid_name_error_is_a_value_error_and_pickles() -> None:
    with pytest.raises(ValueError) as info:
        check_name("..")
    back = pickle.loads(pickle.dumps(info.value))
    assert isinstance(back, InvalidNameError)
    assert back.name == ".."  # type: ignore[attr-defined]
    assert str(back) == str(info.value)


@pytest.mark.parametrize("name", ["a\x7fb", "a\x85b", "a\x9bb"], ids=["DEL", "NEL", "CSI"])
def test_refuses_other_control_characters(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_name(name)


@pytest.mark.parametrize("tag", ["", "..", "a/b", "x\x00"], ids=repr)
def test_table_tag_refuses_unsafe_names(tmp_path: os.PathLike[str], tag: str) -> None:
    with Table(os.path.join(tmp_path, "t.lance")) as table:
        table.append([{"i": 1}])
        with pytest.raises(InvalidNameError):
            table.tag(tag)
        assert table.tags() == {}
        table.tag("good-tag")
        assert list(table.tags()) == ["good-tag"]
