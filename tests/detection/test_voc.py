"""The VOC reader on a small devkit-layout fixture written here: boxes, classes, difficult flags,
07+12 as one set, and one-line errors for broken files."""

import numpy as np
import pytest
import torch

from ols.detection.voc import TEST_SETS, TRAIN_SETS, VOCDetection, read_annotation

XML = (
    "<annotation><filename>{id}.jpg</filename>"
    "<size><width>40</width><height>30</height><depth>3</depth></size>\n{objects}</annotation>"
)
OBJ = (
    "<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
    "<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"
    "<part><name>head</name></part></object>"
)


def write_devkit(root, images):
    """``images``: {(year, split): {id: [(name, (xmin, ymin, xmax, ymax), difficult)]}}."""
    from PIL import Image

    for (year, split), entries in images.items():
        folder = root / "VOCdevkit" / f"VOC{year}"
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        with open(folder / "ImageSets" / "Main" / f"{split}.txt", "a") as listing:
            for image_id, objects in entries.items():
                listing.write(image_id + "\n")
                grey = Image.fromarray(np.full((30, 40, 3), 120, np.uint8))
                grey.save(folder / "JPEGImages" / f"{image_id}.jpg")
                body = "".join(OBJ.format(name=n, b=b, d=int(d)) for n, b, d in objects)
                (folder / "Annotations" / f"{image_id}.xml").write_text(XML.format(id=image_id, objects=body))
    return root


@pytest.fixture
def devkit(tmp_path):
    pytest.importorskip("PIL")
    return write_devkit(
        tmp_path,
        {
            ("2007", "trainval"): {
                "000005": [("chair", (1, 2, 10, 12), False), ("person", (5, 5, 30, 25), True)]
            },
            ("2012", "trainval"): {
                "2008_000001": [("dog", (3, 4, 20, 29), False)],
                "2008_000002": [("tvmonitor", (1, 1, 40, 30), False)],
            },
            ("2007", "test"): {"000001": [("cat", (2, 2, 9, 9), False)]},
        },
    )


def test_reads_07_plus_12_trainval_with_devkit_boxes_and_difficult_flags(devkit):
    data = VOCDetection(str(devkit))  # the folder holding VOCdevkit
    assert len(data) == 3 and data.num_classes == 20
    image, target = data[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8
    # 1-based inclusive pixels (1, 2, 10, 12) -> continuous (0, 1, 10, 12): the devkit's area (10 * 11)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 1, 10, 12], [4, 4, 30, 25]]))
    assert target["labels"].tolist() == [8, 14] and target["difficult"].tolist() == [False, True]
    assert [t["labels"].tolist() for t in data.targets[1:]] == [[11], [19]]
    test = VOCDetection(str(devkit / "VOCdevkit"), sets=TEST_SETS)  # or VOCdevkit itself
    assert len(test) == 1 and test.targets[0]["labels"].tolist() == [7]
    train = VOCDetection(str(devkit), keep_difficult=False)
    assert train.targets[0]["labels"].tolist() == [8]
    assert TRAIN_SETS == (("2007", "trainval"), ("2012", "trainval"))


def test_broken_files_are_one_line_naming_them(devkit):
    ann = devkit / "VOCdevkit" / "VOC2012" / "Annotations" / "2008_000001.xml"
    ann.write_text("<annotation><object><name>dog</name></annotation>")
    with pytest.raises(ValueError, match=r"2008_000001.xml: not valid XML \(mismatched tag: line 1"):
        VOCDetection(str(devkit))
    ann.write_text(XML.format(id="x", objects=OBJ.format(name="dgo", b=(1, 1, 2, 2), d=0)))
    with pytest.raises(ValueError, match=r"2008_000001.xml: object 1 is 'dgo', not one of the 20 classes"):
        read_annotation(ann)
    partial = "<object><name>dog</name><bndbox><xmin>1</xmin></bndbox></object>"
    ann.write_text(XML.format(id="x", objects=partial))
    with pytest.raises(ValueError, match=r"object 1 \(dog\) has no complete <bndbox>"):
        read_annotation(ann)
    (devkit / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2008_000002.jpg").unlink()
    with pytest.raises(ValueError, match=r"2008_000002.jpg: missing image of id 2008_000002 \(line 2 of "):
        VOCDetection(str(devkit), sets=[("2012", "trainval")])
    with pytest.raises(ValueError, match=r"ImageSets/Main/val.txt: missing"):
        VOCDetection(str(devkit), sets=[("2007", "val")])
    with pytest.raises(ValueError, match="no VOC2007/ or VOC2012/ folder"):
        VOCDetection(str(devkit / "elsewhere"))
