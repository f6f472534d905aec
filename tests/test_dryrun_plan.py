"""``archive --dry-run`` names the codec archive tries first (never a screened one while
another can run) and estimates the encode time per codec without encoding any image."""

from pixarc import dryrun
from pixarc.codec import Param

from test_rd_selection import Palette, images, use_plugin  # noqa: F401  (fixture)


def test_dry_run_never_names_a_screened_codec_first_and_estimates_cost(images, tmp_path, monkeypatch):
    calls = []

    class Screened(Palette):
        codec_id = "test-screened"
        screened = True
        params_schema = {"quality": Param(int, 2, 1, 3)}

        def psnr_ceiling(self, src, params, device="cpu"):
            calls.append(("ceiling", src.info.pixels))
            return 99.0

        def encode(self, src, params, device="cpu"):
            calls.append(("encode", src.info.pixels))
            return super().encode(src, params, device)

    use_plugin(monkeypatch, "screened", Screened)
    p = tmp_path / "p.toml"
    p.write_text('selection = "rd"\nmin_confidence = 1.1\n[routes.unknown]\nlossless = false\n'
                 'codecs = ["test-screened", "webp"]\ntarget_psnr = 30.0\n')
    plan = dryrun.dry_run(str(images), str(tmp_path / "d"), str(p))
    assert plan.to_archive == 3
    assert [r["codec"] for r in plan.rows] == ["webp"] * 3
    assert all("rd: 3 candidates tried" in r["note"] for r in plan.rows), [r["note"] for r in plan.rows]  # webp, test-screened, store
    costs = {c.codec: c for c in plan.costs.rows()}
    assert costs["test-screened"].work == "ceiling" and costs["webp"].work == "rate search"
    assert all(c.images == 3 and c.seconds >= 0 for c in costs.values() if c.codec != "store")
    assert calls and {k for k, _ in calls} == {"ceiling"}  # the screened codec never encoded an image
    assert all(px <= dryrun.CROP * dryrun.CROP for _, px in calls)  # only the small calibration crop
