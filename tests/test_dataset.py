"""Class folders, the positive class, and the train/validation split (no TensorFlow)."""

import pytest

from models.classes import looks_positive, positive_index
from models.dataset import DatasetError, discover, folder_map_for_model, parse_folder_map, split
from tests.blob_data import write_blob_dataset


@pytest.mark.parametrize(
    "name, positive",
    [
        ("COVID", True),
        ("CT_COVID", True),
        ("covid19", True),
        ("non-COVID", False),
        ("CT_NonCOVID", False),
        ("non_covid", False),
        ("Normal", False),
    ],
)
def test_the_positive_folder_is_named_like_covid_without_non(name, positive):
    assert looks_positive(name) is positive


def test_positive_must_be_clear_or_named():
    assert positive_index(["Normal", "CT_COVID"]) == 1
    with pytest.raises(ValueError, match="--positive"):
        positive_index(["Normal", "Pneumonia"])
    with pytest.raises(ValueError, match="'X'"):
        positive_index(["COVID", "NonCOVID"], "X")


@pytest.fixture(scope="module")
def ucsd_like(tmp_path_factory):
    return write_blob_dataset(
        tmp_path_factory.mktemp("data"), 20, size=16, folders=("CT_COVID", "CT_NonCOVID")
    )


def test_discover_puts_the_positive_class_first(ucsd_like):
    data = discover(ucsd_like)
    assert data.classes == ("CT_COVID", "CT_NonCOVID") and data.positive_index == 0
    assert data.counts() == {"CT_COVID": 20, "CT_NonCOVID": 20}
    mapped = discover(ucsd_like, parse_folder_map("CT_NonCOVID=NonCOVID,CT_COVID=COVID"))
    assert mapped.classes == ("NonCOVID", "COVID") and mapped.positive_index == 1
    assert folder_map_for_model(ucsd_like, ("COVID", "NonCOVID"), "COVID") == {
        "CT_COVID": "COVID",
        "CT_NonCOVID": "NonCOVID",
    }


def test_stratified_split_is_fixed_by_the_seed(ucsd_like):
    data = discover(ucsd_like)
    first, again, other = split(data, seed=1), split(data, seed=1), split(data, seed=2)
    assert first == again and first.validation != other.validation
    assert len(first.validation) == 8
    assert sorted(data.labels[first.validation].tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_group_split_keeps_each_patient_on_one_side(ucsd_like):
    data = discover(ucsd_like)
    parts = split(data, 0.2, 3, group_regex=r"(p\d+)_s")

    def patient(i):
        return data.paths[i].name.split("_")[0]

    assert parts.grouped and parts.groups == 10
    assert not {patient(i) for i in parts.train} & {patient(i) for i in parts.validation}
    assert set(data.labels[parts.validation].tolist()) == {0, 1}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"group_regex": r"nomatch"}, "does not match"),
        ({"group_regex": "("}, "not a valid regex"),
        ({"val_split": 1.5}, "between 0 and 1"),
    ],
)
def test_bad_split_options_are_named(ucsd_like, kwargs, message):
    with pytest.raises(DatasetError, match=message):
        split(discover(ucsd_like), **kwargs)


def test_a_folder_without_two_classes_is_refused(tmp_path):
    write_blob_dataset(tmp_path, 3, size=16, folders=("COVID", "empty"))
    for image in (tmp_path / "empty").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match="one sub-folder of images per class"):
        discover(tmp_path)
