"""What is installed and what it makes of a collection: ``pixarc plugins`` and ``pixarc classify``."""

from __future__ import annotations

import json

import click
from rich.table import Table

from ..console import console, err, say, styled, warn_text
from ..errors import PixarcError
from . import jsonout
from .options import json_flag, policy_help, storage_options
from .root import main, registry


@main.command()
@json_flag("plugins")
def plugins():
    """List loaded plugins, their hooks, codecs and classifiers, and which cannot run here and why."""
    from ..plugins import LEARNED_HINT, missing_learned_dependencies

    reg = registry()
    missing = missing_learned_dependencies()
    table = Table(title="pixarc plugins")
    for col in ("name", "distribution", "version", "hooks", "provides"):
        table.add_column(col)
    plugin_docs = []
    for p in reg.plugins():
        provides = ", ".join(list(p.codecs) + [f"classifier:{c}" for c in p.classifiers])
        why = None
        if not provides and {"register_codecs", "register_classifiers"} & set(p.hooks):
            # learned-codec plugins register nothing without their dependencies
            why = f"nothing registered: {', '.join(missing)} not installed ({LEARNED_HINT})" if missing else \
                "nothing registered"
        table.add_row(p.name, p.distribution, p.version, ", ".join(p.hooks),
                      provides or warn_text(why or ""))
        plugin_docs.append({"name": p.name, "module": p.module, "distribution": p.distribution,
                            "version": p.version, "hooks": list(p.hooks), "codecs": list(p.codecs),
                            "classifiers": list(p.classifiers), "unavailable_reason": why})
    console.print(table)
    if missing:
        say(f"learned codecs unavailable: {', '.join(missing)} not installed ({LEARNED_HINT})")
    codecs = Table(title="codecs")
    for col in ("codec", "lossless", "modes", "version", "params", "available"):
        codecs.add_column(col)
    codec_docs = []
    for cid in sorted(reg.codecs):
        cls = reg.codecs[cid]
        why = reg.unavailable_reason("codec", cid)
        version, broken = _codec_version(reg, cid)
        why = why or broken
        params = ", ".join(f"{k}={v.default}" for k, v in cls.params_schema.items())
        modes = " ".join(sorted(cls.modes)) if cid != "store" else "any"
        codecs.add_row(cid, "yes" if cls.lossless else "no", modes, version, params,
                       "yes" if why is None else styled(("no", "yellow"), ": ", why))
        codec_docs.append({"codec": cid, "plugin": reg.owner.get(cid, ""), "lossless": bool(cls.lossless),
                           "modes": modes.split(), "version": version, "params": {k: v.default for k, v in
                                                                                   cls.params_schema.items()},
                           "available": why is None, "unavailable_reason": why})
    console.print(codecs)
    classifier_docs = []
    for name in sorted(reg.classifiers):
        why = reg.unavailable_reason("classifier", name)
        classifier_docs.append({"classifier": name, "plugin": reg.owner.get(name, ""), "available": why is None,
                                "unavailable_reason": why})
        if why:
            say(styled(f"classifier {name}: ", ("unavailable", "yellow"), ": ", why))
    jsonout.put(plugins=plugin_docs, codecs=codec_docs, classifiers=classifier_docs,
                learned_dependencies_missing=missing)


def _codec_version(reg, cid: str) -> tuple[str, str | None]:
    """A codec's version, or ("-", why) when it cannot be made or asked here (a learned
    codec asks torch for its version: without torch that is an ImportError)."""
    from ..plugins import missing_dependency

    try:
        return reg.codec(cid).version(), None
    except PixarcError as exc:
        return "-", str(exc)
    except ImportError as exc:
        return "-", f"{cid}: {missing_dependency(exc)}"


@main.command()
@click.argument("src")
@click.option("--policy", default=None, help=policy_help("Policy whose classifier to use"))
@click.option("--jsonl", "as_json", is_flag=True, help="One JSON object per line, as each image is classified.")
@storage_options("src")
@json_flag("classify")
def classify(src, policy, as_json):
    """Print the domain and confidence of every image under SRC."""
    if as_json and jsonout.active():  # one JSON document per command, or a stream of lines: not both
        raise click.UsageError("--jsonl and --json exclude each other")
    from ..classify import pick_classifier
    from ..crawl import crawl
    from ..intake import intake
    from ..policy import load_policy

    pol = load_policy(policy)
    reg = registry()
    clf, note = pick_classifier(reg, pol)
    if note:
        err.print(note)
    images: list[dict] = []
    table = Table(title=f"{src} — classifier {clf.classifier_id}")
    for col in ("key", "domain", "confidence", "scores"):
        table.add_column(col)
    for ref in crawl(src):
        it = intake(ref, pol, reg, route=False)  # the same read/probe/classify as archive
        if it.error is not None:
            rec = {"key": ref.key, "domain": "-", "confidence": None, "error": f"{it.error.reason}: {it.error}"}
        elif it.src.image is None:
            rec = {"key": ref.key, "domain": "-", "confidence": None,
                   "error": "error: no canonical pixels: " + "; ".join(it.src.info.notes)}
        else:
            c = it.classification
            rec = {"key": ref.key, "domain": c.domain, "confidence": round(c.confidence, 4),
                   "scores": {k: round(v, 4) for k, v in c.scores.items()}}
        images.append(rec)
        if as_json:
            click.echo(json.dumps(rec))
        elif not jsonout.active():
            scores = rec.get("error") or " ".join(f"{k[:4]}={v:.2f}" for k, v in rec["scores"].items())
            conf = "" if rec["confidence"] is None else f"{rec['confidence']:.2f}"
            table.add_row(rec["key"], rec["domain"], conf, scores)
    jsonout.put(src=src, classifier=clf.classifier_id, note=note or None, images=images)
    if not as_json:
        console.print(table)
