import os

import fsspec
import pytest

from pixarc.crawl import crawl


def make_tree(root):
    for rel in ["b/2.png", "b/1.png", "a.png", "c/d/e.png", ".hidden/x.png", ".DS_Store"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())


def test_local_crawl_is_sorted_and_skips_hidden(tmp_path):
    make_tree(tmp_path)
    refs = list(crawl(str(tmp_path)))
    assert [r.key for r in refs] == ["a.png", "b/1.png", "b/2.png", "c/d/e.png"]
    assert all(r.uri.startswith("file://") and r.size > 0 and r.mtime for r in refs)


def test_symlink_loops_end(tmp_path):
    make_tree(tmp_path)
    os.symlink(tmp_path, tmp_path / "c" / "loop")
    os.symlink(tmp_path / "b", tmp_path / "b_again")
    assert [r.key for r in crawl(str(tmp_path))] == ["a.png", "b/1.png", "b/2.png", "c/d/e.png"]
    followed = [r.key for r in crawl(str(tmp_path), follow_symlinks=True)]
    # b_again is the same directory as b (visited once); the loop is not re-entered
    assert len(followed) == len(set(followed)) and "c/d/e.png" in followed and len(followed) == 4


def test_memory_crawl_and_single_file(tmp_path):
    mem = fsspec.filesystem("memory")
    mem.pipe("/crawl-t/x/1.png", b"1")
    mem.pipe("/crawl-t/2.png", b"22")
    refs = list(crawl("memory://crawl-t"))
    assert [(r.key, r.size) for r in refs] == [("2.png", 2), ("x/1.png", 1)]
    assert refs[0].uri == "memory:///crawl-t/2.png"
    single = list(crawl("memory://crawl-t/2.png"))
    assert [r.key for r in single] == ["2.png"]


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(crawl(str(tmp_path / "nope")))


def test_include_pattern(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    assert "notes.txt" not in [r.key for r in crawl(str(tmp_path), include="*.png")]
