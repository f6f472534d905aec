"""A restore of a lossy row is recognisably not the original: ``<key>.lossy.png``, counted."""

import numpy as np
from PIL import Image

from pixarc import runs
from pixarc.manifest import latest, read_manifest


def test_lossy_restores_are_named_and_counted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    yy, xx = np.mgrid[0:40, 0:48]
    photo = np.stack([120 + 70 * np.sin(xx / 6 + c) * np.cos(yy / 5) for c in range(3)], -1)
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(src / "photo.png")
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(src / "flat.png")
    policy = tmp_path / "p.toml"  # photo.png: webp at 30 dB; flat.png: its original bytes (store) are smaller
    policy.write_text('selection = "rd"\nclassifier = "stats"\nmin_confidence = 1.1\n[routes.unknown]\n'
                      'lossless = false\ncodecs = ["webp"]\ntarget_psnr = 30.0\n')
    dest, out = tmp_path / "d", tmp_path / "out"
    runs.archive_local(str(src), str(dest), policy=str(policy))
    rows = {r["key"]: r for r in latest(read_manifest(str(dest))).to_pylist()}
    lossy = {k for k, r in rows.items() if not r["lossless"]}
    assert lossy == {"photo.png"}, {k: r["codec_id"] for k, r in rows.items()}
    s = runs.restore_local(str(dest), str(out))
    assert s.totals.done == 2 and s.totals.lossy == len(lossy) and not s.problems
    for key, r in rows.items():
        if key in lossy:
            assert (out / f"{key}.lossy.png").exists() and not (out / key).exists()
        else:
            assert (out / key).exists()
