"""``--policy fast``: lossless, one codec per domain at a fast effort (one encode per image)."""

import json

from pixarc import runs
from pixarc.manifest import latest, read_manifest
from pixarc.policy import load_policy


def test_fast_policy_encodes_each_image_once_losslessly(small_collection, tmp_path):
    policy = load_policy("fast")
    assert policy.selection == "first" and all(r.lossless for r in policy.routes.values())
    assert {r.codecs[0] for r in policy.routes.values()} <= {"jxl-lossless", "webp-lossless"}
    assert policy.params["jxl-lossless"]["effort"] <= 3 and policy.params["webp-lossless"]["method"] <= 2
    dest = tmp_path / "d"
    s = runs.archive_local(str(small_collection), str(dest), policy="fast")
    assert s.totals.done == 5
    for r in latest(read_manifest(str(dest))).to_pylist():
        tried = [a for a in json.loads(r["attempts"]) if a["result"] == "verified"]
        assert len(tried) == 1 and r["lossless"] and r["codec_id"] == policy.routes[r["route"]].codecs[0]
        assert json.loads(r["params"]) == {"jxl-lossless": {"effort": 3}, "webp-lossless": {"method": 2}}[r["codec_id"]]
