"""pclip_jax.plumbing.metrics against values computed by hand: per-class AUC, mAUC, accuracy, macro-F1, the confusion
matrix, ECE; classes whose AUC is undefined (absent from the labels, or the only class) are listed, not averaged."""
import math

import numpy as np
import pytest

from pclip_jax.plumbing import metrics

NAMES = ["Chat", "VPN", "Web"]
Y = np.array([0, 0, 1, 1, 2])
P = np.array([[0.9, 0.05, 0.05],
              [0.4, 0.5, 0.1],
              [0.5, 0.4, 0.1],
              [0.1, 0.8, 0.1],
              [0.3, 0.6, 0.1]])


def test_report_equals_the_hand_computation():
    r = metrics.classification_report(Y, P, NAMES)
    # AUC = share of (positive, negative) pairs ranked right, ties half:
    # Chat: 0.9 beats 0.5, 0.1, 0.3; 0.4 beats 0.1, 0.3 -> 5/6. VPN: 0.8 beats 0.05, 0.5, 0.6; 0.4 beats 0.05 -> 4/6.
    # Web: its one positive (0.1) beats 0.05 and ties three 0.1 -> (1 + 1.5) / 4.
    assert r["per_class_auc"] == pytest.approx({"Chat": 5 / 6, "VPN": 4 / 6, "Web": 2.5 / 4})
    assert r["mauc"] == pytest.approx((5 / 6 + 4 / 6 + 2.5 / 4) / 3)
    assert r["undefined_auc"] == []
    # Predictions 0, 1, 0, 1, 1: rows 0 and 3 right.
    assert r["accuracy"] == pytest.approx(0.4)
    assert r["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 1, 0]]
    # F1: Chat P=1/2 R=1/2 -> 1/2; VPN P=1/3 R=1/2 -> 2/5; Web 0.
    assert r["macro_f1"] == pytest.approx((0.5 + 0.4 + 0.0) / 3)
    assert r["support"] == {"Chat": 2, "VPN": 2, "Web": 1} and r["num_flows"] == 5 and r["classes"] == NAMES


def test_ece_equals_the_hand_computation():
    c = metrics.calibration(Y, P)
    # Top-class confidence 0.9 (right), 0.5 (wrong), 0.5 (wrong), 0.8 (right), 0.6 (wrong): bins 9, 5, 5, 8, 6.
    # ECE = (2*|0.5-0| + 1*|0.6-0| + 1*|0.8-1| + 1*|0.9-1|) / 5.
    assert c["ece"] == pytest.approx((1.0 + 0.6 + 0.2 + 0.1) / 5)
    assert c["count"] == [0, 0, 0, 0, 0, 2, 1, 0, 1, 1]
    assert c["accuracy"][5] == 0.0 and c["accuracy"][8] == 1.0 and c["confidence"][6] == pytest.approx(0.6)
    assert metrics.classification_report(Y, P, NAMES)["calibration"] == c
    # Confident and always right: perfectly calibrated.
    assert metrics.calibration(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))["ece"] == 0.0
    # Five bins: the bin edges move, the hand computation with them (0.5 and 0.6 share bin 2, 0.8 and 0.9 bin 4).
    assert metrics.calibration(Y, P, bins=5)["ece"] == pytest.approx((3 * abs(1.6 / 3 - 0) + 2 * abs(0.85 - 1)) / 5)


def test_logits_have_no_calibration():
    r = metrics.classification_report(Y, np.log(P) * 3.0, NAMES)
    assert "calibration" not in r
    assert r["per_class_auc"] == pytest.approx({"Chat": 5 / 6, "VPN": 4 / 6, "Web": 2.5 / 4})  # ranks unchanged


def test_a_class_absent_from_the_labels_has_no_auc_and_is_not_averaged():
    y, p = Y[:4], P[:4]  # no Web flow
    r = metrics.classification_report(y, p, NAMES)
    assert r["undefined_auc"] == ["Web"] and "Web" not in r["per_class_auc"]
    # Chat: 0.9 beats 0.5, 0.1; 0.4 beats 0.1 -> 3/4. VPN: 0.8 beats 0.05, 0.5; 0.4 beats 0.05 -> 3/4.
    assert r["mauc"] == pytest.approx(0.75)  # the mean of two, not (0.75 + 0.75 + 0.5) / 3
    # Macro-F1 over the classes present: Chat 1/2, VPN 1/2 (no 0 for Web).
    assert r["macro_f1"] == pytest.approx(0.5)
    assert r["support"]["Web"] == 0


def test_a_single_class_leaves_every_auc_undefined():
    y = np.zeros(3, np.int64)
    r = metrics.classification_report(y, P[:3], NAMES)
    assert r["undefined_auc"] == NAMES and r["per_class_auc"] == {}
    assert math.isnan(r["mauc"])
    assert r["accuracy"] == pytest.approx(2 / 3)  # predictions Chat, VPN, Chat
    empty = metrics.classification_report(np.zeros(0, np.int64), np.zeros((0, 3)), NAMES)
    assert math.isnan(empty["mauc"]) and math.isnan(empty["accuracy"]) and empty["num_flows"] == 0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"scores shape \(5, 3\) does not match 5 flows × 2 classes"):
        metrics.classification_report(Y, P, NAMES[:2])


def test_restricted_report_renormalises_among_its_classes():
    # Chat and VPN flows only, scored among Chat and VPN: the Web flow is counted apart.
    r = metrics.restricted_report(Y, P, NAMES, [1, 0], captures=["a", "a", "b", "b", "c"])
    assert r["classes"] == ["Chat", "VPN"] and r["num_flows"] == 4 and r["flows_of_other_classes"] == 1
    renorm = P[:4, :2] / P[:4, :2].sum(1, keepdims=True)
    assert r["calibration"] == metrics.calibration(Y[:4], renorm)
    # Capture a: votes Chat, VPN: a tie, broken by the summed probability (Chat .9/.95 + .4/.9 > VPN): Chat, right.
    # Capture b: votes Chat, VPN: VPN's sum (.4/.9 + .8/.9) is larger: VPN, right.
    assert r["per_capture"] == {"accuracy": 1.0, "macro_f1": 1.0, "num_captures": 2}


def test_per_capture_majority_vote():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4], [0.4, 0.6]])
    # Capture a: votes 0, 1, 0 -> 0 (right). Capture b: votes 0, 1 tie -> larger summed probability: 1.0 vs 1.0 ...
    r = metrics.per_capture_accuracy(y, p, ["a", "a", "a", "b", "b"], ["x", "y"])
    assert r["num_captures"] == 2 and r["accuracy"] in (0.5, 1.0)
    # ... so break it clearly: b's second flow more sure of class 1.
    p[4] = [0.1, 0.9]
    r = metrics.per_capture_accuracy(y, p, ["a", "a", "a", "b", "b"], ["x", "y"])
    assert r == {"accuracy": 1.0, "macro_f1": 1.0, "num_captures": 2}


def test_novelty_split_and_tables():
    apps = ["Signal", "WireGuard", "WireGuard", "OpenVPN", "Google"]
    r = metrics.by_application_novelty(Y, P, NAMES, apps, {"WireGuard", "Signal"})
    assert r[metrics.SEEN]["num_flows"] == 3 and r[metrics.NOVEL]["num_flows"] == 2
    assert r[metrics.SEEN]["applications"] == ["Signal", "WireGuard"]
    assert "confusion_matrix" not in r[metrics.SEEN]
    none = metrics.by_application_novelty(Y, P, NAMES, apps, set())
    assert none[metrics.SEEN]["num_flows"] == 0 and math.isnan(none[metrics.SEEN]["mauc"])
    rows = metrics.novelty_rows("probe", {"by_application_novelty": none})
    assert [name for name, _ in rows] == ["probe, novel apps"]
    table = metrics.format_table([("probe", metrics.classification_report(Y, P, NAMES))])
    assert table.splitlines()[1].split() == ["probe", "0.708", "0.400", "0.300", "5"]


def test_by_group_leaves_out_groups_of_one_class():
    out = metrics.by_group(["s1", "s1", "s1", "s1", "s2"], Y, {"probe": P}, NAMES, {"s1": [0, 1], "s2": [2]},
                           ["a", "a", "b", "b", "c"])
    assert set(out) == {"s1"} and out["s1"]["probe"]["num_flows"] == 4


def test_roc_plot_is_written(tmp_path):
    path = tmp_path / "plots" / "roc.png"
    metrics.plot_roc(Y, P, NAMES, path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
