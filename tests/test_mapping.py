import pytest

from tinybert.errors import InputError
from tinybert.models.students import parse_layer_map, uniform_layer_map


@pytest.mark.parametrize("teacher,student,expected", [
    (12, 4, [3, 6, 9, 12]),
    (6, 4, [2, 3, 5, 6]),
    (6, 3, [2, 4, 6]),
    (12, 6, [2, 4, 6, 8, 10, 12]),
    (6, 6, [1, 2, 3, 4, 5, 6]),
])
def test_uniform_mapping(teacher, student, expected):
    assert uniform_layer_map(student, teacher) == expected


def test_explicit_mapping():
    assert parse_layer_map("1, 4,6", 3, 6) == [1, 4, 6]


@pytest.mark.parametrize("text,message", [
    ("3,6,9", "has 3 entries but the student has 4 layers"),
    ("3,6,9,13", "outside 1..12"),
    ("0,6,9,12", "outside 1..12"),
    ("a,b,c,d", "not a list of layer numbers"),
])
def test_explicit_mapping_errors(text, message):
    with pytest.raises(InputError, match=message):
        parse_layer_map(text, 4, 12)


@pytest.mark.parametrize("student", [3, 6])
def test_no_uniform_mapping_for_a_student_deeper_than_its_teacher(student):
    with pytest.raises(InputError, match=f"a {student}-layer student of a 2-layer teacher"):
        uniform_layer_map(student, 2)


def test_an_explicit_mapping_for_a_student_deeper_than_its_teacher_is_refused():
    with pytest.raises(InputError, match="a 3-layer student of a 2-layer teacher"):
        parse_layer_map("1,1,2", 3, 2)
