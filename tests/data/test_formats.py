"""The folder walk of the data sets (`lungnet.data.formats.walk_images`)."""

import os

from lungnet.data.formats import image_files, image_names, walk_images


def test_walked_files_come_in_path_order(tmp_path):
    """Sorted part by part as Paths sort (``a/b.png`` before ``a-b/c.png``, though '-' sorts before '/'), from
    keys built once per folder."""
    names = ["a/b.png", "a-b/c.png", "a.b/a.png", "a/B.png", "a/a_1.png", "a/a-1.png", "z.png", "a/x/y.png", "A.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    found = walk_images(tmp_path)
    assert found == sorted(tmp_path / n for n in names)
    assert found.index(tmp_path / "a/b.png") < found.index(tmp_path / "a-b/c.png")
    assert image_files(tmp_path) == [str(p) for p in found]


def test_image_names_are_the_walked_files_by_name(tmp_path):
    """`image_names`: each file name and its path, the path that sorts last for a name in two folders."""
    for name in ["a/x.png", "b/x.png", "b/y.PNG", "c/z.jpg", "c/notes.txt", "c/.hidden.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    files = image_files(tmp_path)
    assert image_names(tmp_path) == {os.path.basename(p): p for p in files}
    assert image_names(tmp_path)["x.png"] == str(tmp_path / "b" / "x.png") and len(files) == 4
