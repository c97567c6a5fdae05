"""Which out-of-mission score separates what a workdir never saw: every candidate on the same flows.

    python benchmarks/ood_study.py W [OTHER ...] [--json OUT]

W: a finished workdir of the main job with the GNN stage (`gnn/calibration_flows.npz`, `embeddings.npz`); OTHER:
captures of other datasets (e.g. ../shared/data/iot_sentinel into an nDPI workdir), ingested and filtered with W's
settings. For each candidate score (lower = more out of mission) the AUROC of
* `validation_novel` / `test_novel`: flows of applications absent from training against the other flows of the
  split (the only out-of-mission signal a job has before its test split; NaN where a split has none);
* `<OTHER>`: the other dataset's flows against W's test flows (what `benchmarks/out_of_mission.py` reports for the
  shipped score), and `<OTHER> vs validation` against W's validation flows (the figure a choice between scores may
  read).
Candidates: the class-text similarity (the score of workdirs calibrated before 2026-12-07), nearest-neighbour
similarity (k = 1, 5, 20, 50) to the training flows in the shared space (`z`, what the job ships with k = 5) and
in the packet features before the projection head (`features`), a Mahalanobis distance to the training features,
and nearest-neighbour distances in the raw inputs (standardised flow statistics, masked bytes of the first 4 and
16 packets, packet sizes, TCP flags). With `--exposure AUX ...` (captures of other traffic, never the OTHER ones:
outlier exposure needs its own out-of-mission examples), also scores that learn from them: a logistic regression
of training flows against AUX flows on `z` and on `features`, and the 5-NN similarity to the training flows minus
that to the AUX flows. docs/trust.md, "Out of mission", has the figures.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from pclip_jax.plumbing import files
from pclip_jax.plumbing.workdir import Workdir
from pclip_jax.training import calibration as cal
from pclip_jax.training import experiment
from pclip_jax.training.detection import CALIBRATION_FLOWS
from pclip_jax.training.restore import load_classifier
from pclip_jax.training.towers import embed_flows

KS = (1, 5, 20, 50)


def raw_views(tensors: dict, idx) -> dict:
    """The raw inputs of flows `idx` as flat float32 rows per view."""
    idx = np.asarray(idx)
    b = tensors["bytes"][idx].astype(np.float32) / 255.0
    return {"stats": tensors["stats"][idx].astype(np.float32), "bytes4": b[:, :4].reshape(len(idx), -1),
            "bytes16": b.reshape(len(idx), -1), "sizes": (tensors["sizes"][idx] / 1500.0).astype(np.float32),
            "tcp_flags": (tensors["tcp_flags"][idx] / 255.0).astype(np.float32)}


def knn_distance(query: np.ndarray, bank: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """[N] minus the mean Euclidean distance to the `k` nearest rows of `bank` (higher = more typical)."""
    out = np.empty(len(query))
    bank_sq = (bank * bank).sum(1)
    for i in range(0, len(query), chunk):
        q = query[i:i + chunk]
        d = (q * q).sum(1)[:, None] + bank_sq[None] - 2 * q @ bank.T
        out[i:i + chunk] = -np.sqrt(np.maximum(np.partition(d, k - 1, axis=1)[:, :k], 0)).mean(1)
    return out


def mahalanobis(train: np.ndarray):
    """A scorer of minus the Mahalanobis distance to `train`'s mean under its covariance (ridge 1e-3)."""
    mu = train.mean(0)
    precision = np.linalg.inv(np.cov((train - mu).T) + 1e-3 * np.eye(train.shape[1]))
    return lambda x: -np.einsum("ij,jk,ik->i", x - mu, precision, x - mu)


def exposure_candidates(train: dict, aux: dict):
    """Scores that learn from out-of-mission examples `aux` (outlier exposure; higher = more typical)."""
    from sklearn.linear_model import LogisticRegression
    for view in ("z", "features"):
        x = np.concatenate([train[view], aux[view]])
        y = np.r_[np.zeros(len(train[view])), np.ones(len(aux[view]))]
        mu, sd = x.mean(0), x.std(0) + 1e-6
        fit = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit((x - mu) / sd, y)
        yield f"exposure: logistic, {view}", \
            lambda s, fit=fit, view=view, mu=mu, sd=sd: -fit.decision_function((s[view] - mu) / sd)
    yield "exposure: 5-NN z, training minus aux", \
        lambda s: cal.knn_similarity(s["z"], train["z"], 5) - cal.knn_similarity(s["z"], aux["z"], 5)
    # The shipped 5-NN score and the logistic one on z, each standardised by its spread over the AUX flows, summed.
    x = np.concatenate([train["z"], aux["z"]])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    fit = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(
        (x - mu) / sd, np.r_[np.zeros(len(train["z"])), np.ones(len(aux["z"]))])
    knn = lambda s: cal.knn_similarity(s["z"], train["z"], 5)  # noqa: E731
    logit = lambda s: -fit.decision_function((s["z"] - mu) / sd)  # noqa: E731
    k_aux, l_aux = knn(aux), logit(aux)
    yield "exposure: 5-NN z + logistic z", \
        lambda s: (knn(s) - k_aux.mean()) / k_aux.std() + (logit(s) - l_aux.mean()) / l_aux.std()


def candidates(train: dict, node_text: np.ndarray, aux: dict | None = None):
    """(name, score function of a flow set's dict) pairs; a flow set: `z`, `features` and `raw_views` views."""
    if aux is not None:
        yield from exposure_candidates(train, aux)
    yield "class-text similarity", lambda s: cal.ood_scores(s["z"], node_text)
    for k in KS:
        yield f"{k}-NN similarity, z", lambda s, k=k: cal.knn_similarity(s["z"], train["z"], k)
        yield f"{k}-NN similarity, features", lambda s, k=k: cal.knn_similarity(s["features"], train["features"], k)
    m = mahalanobis(train["features"])
    yield "Mahalanobis, features", lambda s: m(s["features"])
    for view in ("stats", "bytes4", "bytes16", "sizes", "tcp_flags"):
        mu, sd = train[view].mean(0), train[view].std(0) + 1e-6
        scale = (lambda x, mu=mu, sd=sd: (x - mu) / sd) if view == "stats" else (lambda x: x)
        for k in (1, 5):
            yield f"{k}-NN distance, raw {view}", \
                lambda s, view=view, k=k, scale=scale: knn_distance(scale(s[view]), scale(train[view]), k)


def auroc(is_out: np.ndarray, score: np.ndarray) -> float:
    is_out = np.asarray(is_out, bool)
    return float(roc_auc_score(is_out, -score)) if 0 < is_out.mean() < 1 else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", metavar="W")
    ap.add_argument("others", nargs="*", metavar="OTHER")
    ap.add_argument("--exposure", nargs="*", default=[], metavar="AUX",
                    help="captures of other traffic to learn out-of-mission scores from (never an OTHER)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    wd = Workdir(args.workdir)
    finished = experiment.load_finished(wd.read_settings(), args.workdir)
    if finished is None:
        print(f"error: {args.workdir}: not a finished run whose embeddings.npz matches its flows", file=sys.stderr)
        return 2
    _, prepared, _ = finished
    clf = load_classifier(wd)
    settings = clf.settings

    def flow_set(table, idx) -> dict:
        # (tables with server-name vectors: the workdir's flows and `flows_as_trained` both add them)
        features, z = embed_flows(clf.embed_fn, clf.replicated_params, table.tensors, np.asarray(idx),
                                  settings.eval.batch_size)
        return {"features": features, "z": z, **raw_views(table.tensors, idx)}

    flows = files.load_npz(wd.gnn_dir / CALIBRATION_FLOWS)
    train = flow_set(prepared.table, prepared.train_idx)
    sets = {name: flow_set(prepared.table, flows[f"{name}_rows"]) for name in ("validation", "test")}
    novel = {name: np.asarray(flows[f"{name}_unseen_application"], bool) for name in sets}
    others = {}
    for path in args.others:
        table, _ = experiment.flows_as_trained([path], settings)
        others[path] = flow_set(table, np.arange(len(table)))
    aux = None
    if args.exposure:
        table, _ = experiment.flows_as_trained(args.exposure, settings)
        aux = flow_set(table, np.arange(len(table)))
    print(f"{args.workdir}: {len(train['z'])} training, {len(novel['validation'])} validation "
          f"({novel['validation'].mean():.0%} novel applications), {len(novel['test'])} test flows "
          f"({novel['test'].mean():.0%} novel); " + ", ".join(f"{p}: {len(o['z'])} flows" for p, o in others.items()))
    results = {}
    for name, score in candidates(train, cal.ood_node_text(clf.kg), aux):
        own = {split: score(s) for split, s in sets.items()}
        r = {f"{split}_novel": auroc(novel[split], own[split]) for split in sets}
        for path, o in others.items():
            other = score(o)
            r[path] = auroc(np.r_[np.zeros(len(own["test"])), np.ones(len(other))], np.r_[own["test"], other])
            # The same against the validation flows: what a choice between scores may read.
            r[f"{path} vs validation"] = auroc(np.r_[np.zeros(len(own["validation"])), np.ones(len(other))],
                                               np.r_[own["validation"], other])
        results[name] = r
        print(f"  {name:<32} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    if args.json:
        files.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
