"""The controlled study: a tiny plan run end to end through the CLI on data the study renders and
preprocesses itself, resumed after an interruption without recomputing what was finished; the
aggregation (mean ± std over seeds, paired differences) on known numbers."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import yaml
from train_helpers import TINY_MODEL
from typer.testing import CliRunner

from mv2mae.cli import app
from mv2mae.data import fingerprint
from mv2mae.experiment.plan import PLAN_DIR, PlanError, load_plan
from mv2mae.experiment.report import shown_source
from mv2mae.experiment.results import paired, summarize
from mv2mae.experiment.runner import DONE, LEDGER, StudyError, check_no_leak, prepare_dataset, stage_names
from mv2mae.experiment.verify import compare, parse_stage
from mv2mae.shards.schema import read_index
from mv2mae.train.logs import read_log

REPO = Path(__file__).resolve().parents[1]

SEEDS = [0, 1]


def tiny_plan(base, **changes) -> dict:
    plan = {
        "name": "tiny", "config": "tiny",
        "dataset": {"dir": str(base / "data"), "raw": str(base / "raw"), "workers": 1,
                    "synth": {"classes": 2, "cameras": 3, "subjects": 2, "replications": 1, "frames": [16, 20],
                              "size": [64, 48], "seed": 3},
                    "preprocess": {"size": 32, "fps": 15}},
        "pretrain_protocol": "synth_xview_xsub",
        "protocols": {"xview": "synth_xview_all", "xsub": "synth_xsub"},
        "budget": {"shared": [*TINY_MODEL, "data.workers=0", "data.eval_clips=2", "data.eval_crops=1",
                              "loop.log_every=1", "optim.batch_size=2"],
                   "pretrain": ["steps=3", "schedule.warmup_steps=1", "loop.ckpt_every=2", "loop.recon_every=0"],
                   # few labels: the first train subject only (xview's train split holds subjects 1 and 2),
                   # tested on the first test subject (xview: subject 1 from camera 1)
                   "finetune": ["steps=2", "schedule.warmup_steps=1", "data.val_by=none", "data.train_subjects=1",
                                "data.test_subjects=1"]},
        "seeds": SEEDS, "reference": "mv2mae", "primary": {"protocol": "xview", "eval": "finetune"},
        "arms": [{"name": "scratch", "pretrain": False, "evals": ["linear", "finetune"]},
                 {"name": "mv2mae", "title": "MV2MAE"},
                 {"name": "tauinf", "set": ["model.tau=inf"], "seeds": [0], "evals": ["finetune"]}],
        # single-view pretraining (VideoMAE's arm): one camera per sample, tube masking, no motion weights
        "sweeps": {"seeds": [0], "evals": ["knn"], "arms": [
            {"name": "single", "set": ["data.num_sources=0", "model.mask_type=tube", "model.mask_ratio=0.9",
                                       "model.tau=inf", "optim.accum_steps=2"]}]},
        "step_sweep": {"steps": [2], "seeds": [0], "evals": ["knn", "finetune"], "arms": ["mv2mae", "tauinf"]},
    }
    plan.update(changes)
    return plan


def write_plan(path, plan) -> str:
    path.write_text(yaml.safe_dump(plan))
    return str(path)


def invoke(*args):
    result = CliRunner().invoke(app, ["experiment", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def ledger(out) -> list[str]:
    return [json.loads(line)["stage"] for line in (out / LEDGER).read_text().splitlines()]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    plan = write_plan(base / "plan.yaml", tiny_plan(base))
    invoke("--plan", plan, "--out", base / "out", "--device", "cpu")
    return base, plan, base / "out"


def test_a_tiny_plan_runs_every_stage_and_reports_every_arm(study):
    base, plan, out = study
    loaded = load_plan(plan)
    planned = [f"runs/{arm.name}/seed{s}/{stage}" for arm in loaded.arms for s in arm.seeds
               for stage in stage_names(loaded, arm)]
    assert sorted(ledger(out)) == sorted(planned)  # every stage ran exactly once
    results = json.loads((out / "results.json").read_text())
    assert results["progress"]["stages_done"] == results["progress"]["stages_planned"] == len(planned)
    arms = {a["name"]: a for a in results["arms"]}
    assert set(arms) == {"scratch", "mv2mae", "tauinf", "single", "mv2mae-steps2", "tauinf-steps2"}
    assert arms["tauinf"]["seeds"] == [0] and arms["tauinf"]["metrics"]["xview"]["finetune"]["n"] == 1
    assert arms["single"]["metrics"]["xview"]["knn"]["n"] == 1 and "knn" in arms["single"]["vs_reference"]["xview"]
    for key in ("xview", "xsub"):
        assert set(arms["mv2mae"]["metrics"][key]) == {"linear", "knn", "finetune"}
        assert arms["mv2mae"]["metrics"][key]["finetune"]["n"] == len(SEEDS)
        diff = arms["scratch"]["vs_reference"][key]["linear"]
        expect = [arms["scratch"]["metrics"][key]["linear"]["values"][str(s)]
                  - arms["mv2mae"]["metrics"][key]["linear"]["values"][str(s)] for s in SEEDS]
        assert diff["mean"] == pytest.approx(sum(expect) / 2)
    assert [row["steps"] for row in results["step_sweep"]] == [0, 2, 3]
    # every step-sweep arm at every length on its evaluations; 0 = the arm without pretraining
    rows = {row["steps"]: row for row in results["step_sweep"]}
    assert rows[0]["arms"]["tauinf"]["arm"] == "scratch" and rows[3]["arms"]["tauinf"]["arm"] == "tauinf"
    short = rows[2]["arms"]["tauinf"]
    assert short["arm"] == "tauinf-steps2" and set(short["metrics"]["xview"]) == {"knn", "finetune"}
    assert short["metrics"]["xview"]["finetune"]["mean"] == arms["tauinf-steps2"]["metrics"]["xview"]["finetune"]["mean"]
    gap = rows[2]["differences"]["mv2mae - tauinf"]["xview"]["finetune"]
    assert gap["values"]["0"] == pytest.approx(rows[2]["arms"]["mv2mae"]["metrics"]["xview"]["finetune"]["mean"]
                                               - short["metrics"]["xview"]["finetune"]["mean"])
    # the primary reading: the reference minus every arm, every pretrained arm minus scratch, paired over seeds
    prim = results["primary"]
    assert (prim["protocol"], prim["eval"]) == ("xview", "finetune")
    pairs = {(c["a"], c["b"]): c for c in prim["comparisons"]}
    assert set(pairs) == {("mv2mae", "scratch"), ("mv2mae", "tauinf"), ("tauinf", "scratch")}
    main = pairs[("mv2mae", "scratch")]
    ft = {a: arms[a]["metrics"]["xview"]["finetune"]["values"] for a in ("mv2mae", "scratch")}
    per_seed = [ft["mv2mae"][str(s)] - ft["scratch"][str(s)] for s in SEEDS]
    assert main["n"] == 2 and main["mean"] == pytest.approx(sum(per_seed) / 2)
    assert pairs[("mv2mae", "tauinf")]["n"] == 1 and pairs[("mv2mae", "tauinf")]["ci95"] is None
    report = (out / "RESULTS.md").read_text()
    assert "## Primary reading — xview: finetuned top-1 %" in report and "| mv2mae − scratch |" in report
    assert "## Pretraining length: mv2mae, tauinf against pretraining steps" in report
    # few labels: the probes fit and test on the finetune's subsets (the first train subject, the first
    # test subject), the finetune trains on them and its test reads them
    probe = json.loads((out / "runs/scratch/seed0/probe-xview/results.json").read_text())["linear"]
    assert probe["train_videos"] == 2 * 2 * 1  # 2 classes × 1 subject × 1 replication × cameras 2, 3
    assert probe["test_videos"] == 2 * 1 * 1  # 2 classes × 1 subject × camera 1
    data = yaml.safe_load((out / "runs/mv2mae/seed0/finetune-xview/config.yaml").read_text())["data"]
    assert (data["train_subjects"], data["test_subjects"]) == (1, 1)
    assert len(arms["mv2mae"]["pretrain_loss"]) == 3  # logged every step
    assert all(r["loss_cross"] > 0 for r in read_log(out / "runs/mv2mae/seed0/pretrain"))
    assert all(r["loss_cross"] == 0 for r in read_log(out / "runs/single/seed0/pretrain"))  # one view a sample
    report = (out / "RESULTS.md").read_text()
    assert "Status: complete" in report and "MV2MAE" in report and "![accuracy per arm](accuracy.svg)" in report
    assert "seed 3" in report and "mv2mae experiment --plan" in report
    assert shown_source(str(PLAN_DIR / "crossview.yaml")) == "mv2mae/experiment/plans/crossview.yaml"
    assert f"plan `{plan}`" in report  # a plan of one's own: as given
    # the noise line reads the test splits' sizes and chance from the finished tests themselves
    test = json.loads((out / "runs/scratch/seed0/eval-xview/results.json").read_text())
    assert test["videos"]["count"] == 2  # the finetune's test: data.test_subjects=1
    assert results["test_splits"]["xview"] == {"videos": test["videos"]["count"], "chance": test["chance_top1"]}
    assert f"xview: {test['videos']['count']} test videos, chance {100 * test['chance_top1']:.1f}%" in report
    for svg in ("accuracy.svg", "pretrain_loss.svg", "steps.svg"):
        assert (out / svg).read_text().startswith("<svg")
    index = read_index(base / "data")  # the study rendered and preprocessed its dataset
    assert index.dataset == "synth" and index.groups == 4


def done_files(out) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_text()) for p in (out / "runs").rglob(DONE)}


def test_an_interrupted_study_resumes_and_recomputes_only_what_was_unfinished(study, tmp_path):
    base, plan, finished = study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    # killed while pretraining mv2mae/seed1 after its step-2 checkpoint: nothing downstream exists yet
    run = out / "runs" / "mv2mae" / "seed1"
    redo = [d for d in run.iterdir() if d.name != "pretrain"]
    for folder in redo:
        shutil.rmtree(folder)
    (run / "pretrain" / DONE).unlink()
    (run / "pretrain" / "checkpoints" / "step-00000003.pt").unlink()
    # killed while testing scratch/seed1's cross-view finetune
    shutil.rmtree(out / "runs" / "scratch" / "seed1" / "eval-xview")
    (out / "results.json").unlink()
    kept = done_files(out)
    before = ledger(out)

    invoke("--plan", plan, "--out", out, "--device", "cpu")
    rerun = ledger(out)[len(before):]
    expected = {"runs/mv2mae/seed1/pretrain", "runs/scratch/seed1/eval-xview",
                *(f"runs/mv2mae/seed1/{d.name}" for d in redo)}
    assert sorted(rerun) == sorted(expected)  # nothing finished was recomputed ...
    after = done_files(out)
    assert all(after[p] == kept[p] for p in kept)  # ... or rewritten
    resumed = json.loads((run / "pretrain" / DONE).read_text())["result"]
    assert resumed["resumed_from"].endswith("step-00000002.pt") and resumed["steps"] == 3
    progress = json.loads((out / "results.json").read_text())["progress"]
    assert progress["stages_done"] == progress["stages_planned"]


def test_a_finished_stage_made_by_another_plan_is_an_error_not_reused(study, tmp_path):
    base, _, finished = study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    changed = tiny_plan(base)
    changed["arms"][1]["set"] = ["model.tau=20"]
    plan = write_plan(tmp_path / "changed.yaml", changed)
    result = CliRunner().invoke(app, ["experiment", "--plan", plan, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 1
    assert "runs/mv2mae/seed0/pretrain was made by another plan" in result.output
    assert "config.model.tau: 60.0 then, 20.0 now" in result.output
    # nor is a dataset folder rendered with other arguments rendered over
    other = tiny_plan(base)
    other["dataset"]["synth"]["seed"] = 4
    plan = write_plan(tmp_path / "other.yaml", other)
    result = CliRunner().invoke(app, ["experiment", "--plan", plan, "--out", str(tmp_path / "new"), "--device", "cpu"])
    assert result.exit_code == 1 and "holds a dataset rendered with other arguments ({'seed': 3})" in result.output


def test_pretraining_that_would_see_a_test_video_is_refused(study):
    base, _, _ = study
    index = read_index(base / "data")
    check_no_leak(index, "synth_xview_xsub", {"xview": "synth_xview_all", "xsub": "synth_xsub"})
    with pytest.raises(StudyError, match=r"sees \d+ test video\(s\) of xview \(synth_xview_all\)"):
        check_no_leak(index, "synth_xsub", {"xview": "synth_xview_all"})
    with pytest.raises(StudyError, match="of xsub"):
        check_no_leak(index, "synth_xview_all", {"xsub": "synth_xsub"})


def test_summaries_and_paired_differences_on_known_numbers():
    s = summarize({2: 0.6, 0: 0.5, 1: 0.7})
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    assert list(s["values"]) == ["0", "1", "2"]
    one = summarize({4: 0.25})
    assert one["mean"] == 0.25 and one["std"] is None and one["n"] == 1
    assert summarize({})["mean"] is None
    # per-seed differences 0.1, 0.3, -0.1 (seed 3 has no partner): mean 0.1, std 0.2 — while the
    # unpaired spread of either arm alone is larger than the difference
    d = paired({0: 0.5, 1: 0.7, 2: 0.6}, {0: 0.4, 1: 0.4, 2: 0.7, 3: 0.9})
    assert d["mean"] == pytest.approx(0.1) and d["std"] == pytest.approx(0.2) and d["n"] == 3
    assert math.isclose(d["values"]["2"], -0.1)


def test_plans_are_checked_before_anything_runs(tmp_path):
    shipped = load_plan("crossview")
    assert [a.name for a in shipped.arms if a.group == "arm"] == ["scratch", "videomae", "selfonly", "tauinf",
                                                                  "mv2mae"]
    assert all(len(a.seeds) >= 3 for a in shipped.arms if a.group == "arm")
    gpu = load_plan("crossview", "gpu")
    assert gpu.steps > shipped.steps and gpu.pretrain_config(gpu.arm("mv2mae"), 0).model.depth == 12
    assert gpu.budget["pretrain"][:len(shipped.budget["pretrain"])] == shipped.budget["pretrain"]  # appended
    with pytest.raises(PlanError, match="no scale 'huge'"):
        load_plan("crossview", "huge")
    # the default study: the finetune on few labels from an unseen camera is its primary reading, at both
    # scales; five seeds for the three main arms, three for the others
    for scale in ("default", "gpu"):
        study_plan = load_plan("transfer", scale)
        assert study_plan.primary == ("xview", "finetune")
        assert study_plan.protocols["xview"] == study_plan.pretrain_protocol == "synth_xview"
        few = study_plan.finetune_config("synth_xview", 0).data
        assert 0 < few.train_subjects == few.test_subjects  # the labelled subjects, from the unseen camera
        assert study_plan.pretrain_config(study_plan.arm("mv2mae"), 0).data.train_subjects == 0  # all unlabelled
        main = [a for a in study_plan.arms if a.group == "arm"]
        assert [a.name for a in main] == ["scratch", "videomae", "selfonly", "tauinf", "mv2mae"]
        assert all(len(a.seeds) >= (5 if a.name in ("scratch", "videomae", "mv2mae") else 3) for a in main)
        assert study_plan.step_arms == ("mv2mae", "videomae") and "finetune" in study_plan.step_evals
    typo = tiny_plan(tmp_path, arms=[{"name": "mv2mae", "set": ["model.tua=20"]}], step_sweep=None)
    with pytest.raises(PlanError, match="arm mv2mae: unknown config key.*model.tua"):
        load_plan(write_plan(tmp_path / "typo.yaml", typo))
    assert all(None not in row.values() for row in shipped.paper)
    # an unquoted comma in a flow-mapping row of the paper's numbers splits the value into a key
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(tiny_plan(tmp_path)) +
                                         "paper:\n  - {benchmark: ETRI, MV2MAE: 96.5, prior: 95.1 (ConViViT, supervised)}\n")
    with pytest.raises(PlanError, match=r"no value for supervised\)"):
        load_plan(tmp_path / "paper.yaml")
    with pytest.raises(PlanError, match="reference 'mv2mae' must name a pretrained arm"):
        load_plan(write_plan(tmp_path / "ref.yaml", tiny_plan(tmp_path, arms=[{"name": "x", "pretrain": False}],
                                                           step_sweep=None)))
    with pytest.raises(PlanError, match="step_sweep arm 'scratch' must name a pretrained arm"):
        load_plan(write_plan(tmp_path / "steps.yaml", tiny_plan(tmp_path, step_sweep={
            "steps": [2], "seeds": [0], "arms": ["mv2mae", "scratch"]})))
    with pytest.raises(PlanError, match="primary must be"):
        load_plan(write_plan(tmp_path / "primary.yaml", tiny_plan(tmp_path, primary={"protocol": "xsub",
                                                                                   "eval": "top1"})))
    with pytest.raises(PlanError, match="arm mv2mae seeds: a non-empty list of distinct seeds"):
        load_plan(write_plan(tmp_path / "seeds.yaml", tiny_plan(tmp_path, arms=[
            {"name": "mv2mae", "seeds": [1, 1]}], step_sweep=None)))


def test_paired_differences_carry_a_t_interval_and_say_when_it_holds_zero():
    from scipy import stats

    from mv2mae.experiment.results import t975
    for df in (1, 2, 4, 9, 30, 31, 45, 200):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=2e-4)
    # differences 0.05, 0.07, 0.03, 0.05, 0.05: mean 0.05, std sqrt(0.0008/4), t(0.975, 4) = 2.776
    d = paired({s: 0.3 + x for s, x in enumerate((0.05, 0.07, 0.03, 0.05, 0.05))}, {s: 0.3 for s in range(5)})
    half = stats.t.ppf(0.975, 4) * math.sqrt(0.0008 / 4) / math.sqrt(5)
    assert d["ci95"] == pytest.approx([0.05 - half, 0.05 + half], rel=1e-4) and d["resolved"] is True
    assert d["se"] == pytest.approx(math.sqrt(0.0008 / 4) / math.sqrt(5))
    noisy = paired({0: 0.5, 1: 0.3, 2: 0.45}, {0: 0.4, 1: 0.4, 2: 0.4})  # +0.1, -0.1, +0.05
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1] and noisy["resolved"] is False
    assert paired({0: 0.5}, {0: 0.4})["resolved"] is None  # one seed: no interval


def test_a_few_label_split_keeps_the_first_subjects_of_the_split_it_names(study):
    from mv2mae.data.splits import ShardSplit
    from mv2mae.shards.protocols import ProtocolError
    base, _, _ = study
    full = ShardSplit.open(base / "data", "synth_xview_all", "train")
    few = ShardSplit.open(base / "data", "synth_xview_all", "train", train_subjects=1)
    assert sorted({v for s in full.selection.shards for v in s.subjects}) == [1, 2]
    assert {v for s in few.selection.shards for v in s.subjects} == {1}
    assert few.selection.cameras == full.selection.cameras and 0 < few.selection.videos < full.selection.videos
    test = ShardSplit.open(base / "data", "synth_xview_all", "test", train_subjects=1)
    assert sorted({v for s in test.selection.shards for v in s.subjects}) == [1, 2]  # train_subjects: train only
    test = ShardSplit.open(base / "data", "synth_xview_all", "test", train_subjects=2, test_subjects=1)
    assert {v for s in test.selection.shards for v in s.subjects} == {1} and test.selection.cameras == [1]
    with pytest.raises(ProtocolError, match="cannot keep 3 of the train split's 2 subject"):
        ShardSplit.open(base / "data", "synth_xview_all", "train", train_subjects=3)


def test_every_study_and_run_records_the_fingerprint_of_its_data_and_numerics(study, tmp_path):
    base, plan, finished = study
    digest = fingerprint.shards_digest(base / "data")
    dataset = json.loads((finished / "dataset.json").read_text())["fingerprint"]
    assert dataset["shards"] == digest and digest["groups"] == 4
    assert dataset["raw"] == fingerprint.tree_digest(base / "raw") and dataset["raw"]["files"] > 4
    results = json.loads((finished / "results.json").read_text())["fingerprint"]
    assert results["data"] == dataset and results["numerics"]["torch"]["cpu_capability"]
    assert f"Fingerprint: shards sha256 {digest['sha256'][:12]}" in (finished / "RESULTS.md").read_text()
    for stage in ("probe-xview", "eval-xsub"):
        record = json.loads((finished / "runs/mv2mae/seed0" / stage / "results.json").read_text())["fingerprint"]
        assert record["data"]["shards"] == digest and record["numerics"]["cpu"]["model"]
    starts = json.loads((finished / "runs/mv2mae/seed1/pretrain/fingerprint.json").read_text())
    assert starts[0]["step"] == 0 and starts[0]["data"]["shards"] == digest
    # a dataset folder whose shards are not the ones the study recorded is refused, not reused
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    changed = json.loads((out / "dataset.json").read_text())
    changed["fingerprint"]["shards"]["sha256"] = "0" * 64
    (out / "dataset.json").write_text(json.dumps(changed))
    result = CliRunner().invoke(app, ["experiment", "--plan", plan, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 1 and "the data changed: the shards in" in result.output
    a, b = fingerprint.numerics(), fingerprint.numerics()
    b["cpu"]["flags"] = a["cpu"]["flags"] + " zz_new"
    b["environment"]["OPENBLAS_CORETYPE"] = "Prescott"
    assert fingerprint.differences(a, b) == [("cpu.flags", "-", "zz_new"),
                                             ("environment.OPENBLAS_CORETYPE", a["environment"].get(
                                                 "OPENBLAS_CORETYPE"), "Prescott")]


def test_verify_reruns_a_stage_from_scratch_and_says_what_differs(study, tmp_path):
    base, plan, finished = study
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    result = CliRunner().invoke(app, ["experiment", "--plan", plan, "--out", str(out), "--device", "cpu", "--verify"])
    assert result.exit_code == 0, result.output
    first = stage_names(load_plan(plan), load_plan(plan).arm("scratch"))[0]  # no pretraining: the cheap default
    assert f"| runs/scratch/seed0/{first} | committed | re-run | difference |" in result.output
    assert "| data: shards sha256 |" in result.output and "| linear.top1 |" in result.output
    assert "reproduced (asked for identical data digests and bit-equal numbers)" in result.output
    # a committed number the re-run does not give is named, with the difference, and fails the check
    done = out / "runs/scratch/seed0/probe-xview" / DONE
    record = json.loads(done.read_text())
    committed = record["result"]["linear"]["top1"]
    record["result"]["linear"]["top1"] = committed + 0.25
    done.write_text(json.dumps(record))
    dataset = json.loads((out / "dataset.json").read_text())  # and raw videos other than the study's
    dataset["fingerprint"]["raw"]["sha256"] = "f" * 64
    (out / "dataset.json").write_text(json.dumps(dataset))
    result = CliRunner().invoke(app, ["experiment", "--plan", plan, "--out", str(out), "--device", "cpu", "--verify",
                                      "--stage", "runs/scratch/seed0/probe-xview", "--tolerance", "0.1"])
    assert result.exit_code == 1
    assert f"| linear.top1 | {committed + 0.25:.6g} | {committed:.6g} | -0.25 |" in result.output
    assert "NOT reproduced: data: raw sha256, linear.top1 differ" in result.output
    wrong = CliRunner().invoke(app, ["experiment", "--plan", plan, "--out", str(out), "--verify", "--stage",
                                     "runs/scratch/seed7/probe-xview", "--device", "cpu"])
    assert wrong.exit_code == 1 and "arm scratch runs seeds [0, 1]" in wrong.output


def test_verify_compares_within_the_stated_tolerance():
    assert compare("knn.top1", 0.5, 0.5, 0.0) == (("knn.top1", 0.5, 0.5, "identical"), True)
    assert compare("knn.top1", 0.5, 0.55, 0.1)[1] and not compare("knn.top1", 0.5, 0.75, 0.1)[1]
    assert not compare("data: shards sha256", "ab", "cd", None)[1]
    assert not compare("knn.top1", 0.5, None, 0.1)[1]


def test_compare_sets_two_finished_studies_side_by_side(study, tmp_path):
    _, plan, finished = study
    other = tmp_path / "other"
    shutil.copytree(finished, other)
    same = CliRunner().invoke(app, ["experiment", "--out", str(finished), "--compare", str(other)])
    assert same.exit_code == 0 and "| data: shards sha256 |" in same.output and "  no differences" in same.output
    results = json.loads((other / "results.json").read_text())
    arm = next(a for a in results["arms"] if a["name"] == "mv2mae")
    mine = arm["metrics"]["xsub"]["knn"]["values"]["1"]
    arm["metrics"]["xsub"]["knn"]["values"]["1"] = mine + 0.5
    results["fingerprint"]["numerics"]["environment"]["OPENBLAS_CORETYPE"] = "Prescott"
    (other / "results.json").write_text(json.dumps(results))
    differ = CliRunner().invoke(app, ["experiment", "--out", str(finished), "--compare", str(other / "results.json")])
    assert differ.exit_code == 1
    assert f"| mv2mae/seed1/xsub/knn | {mine:.6g} | {mine + 0.5:.6g} | +0.5 |" in differ.output
    assert "environment.OPENBLAS_CORETYPE:" in differ.output and "-> Prescott" in differ.output
    assert "NOT reproduced: mv2mae/seed1/xsub/knn differ" in differ.output


def test_a_dataset_folder_other_than_the_plans_pinned_shards_is_refused(study, tmp_path):
    """The plan pins its dataset's shard digest: a folder left by other code (what the first cross-view study
    read, issue 24) is refused before any stage runs, and the right digest passes."""
    base, _, _ = study
    digest = fingerprint.shards_digest(base / "data")["sha256"]
    spec = tiny_plan(base)["dataset"]
    wrong = write_plan(tmp_path / "wrong.yaml", tiny_plan(base, dataset={**spec, "shards_sha256": "ab" * 32}))
    result = CliRunner().invoke(app, ["experiment", "--plan", wrong, "--out", str(tmp_path / "a"), "--device", "cpu"])
    assert result.exit_code == 1 and f"shards sha256 {digest[:12]}, the plan's dataset.shards_sha256 is abababab" \
        in result.output.replace("\n", "")
    assert not (tmp_path / "a" / "runs").exists()
    right = write_plan(tmp_path / "right.yaml", tiny_plan(base, dataset={**spec, "shards_sha256": digest}))
    assert prepare_dataset(load_plan(right), tmp_path / "b", print) == base / "data"


def test_every_stage_the_docs_tell_a_user_to_verify_exists_in_its_plan():
    """A ``--verify --stage`` command in the README or a study's README names a stage its plan runs (the
    README once named ``eval-transfer``, which no arm has); placeholders (``--plan P``, ``runs/ARM/…``) aside."""
    docs = [REPO / "README.md", *sorted((REPO / "experiments").glob("*/README.md"))]
    commands = [m for doc in docs for m in re.finditer(r"--plan ([a-z][\w-]*) [^`\n]*--stage (runs/[\w-]+/seed\d+/[\w-]+)", doc.read_text())]
    assert commands, "no --verify --stage command found in the docs"
    for match in commands:
        plan = load_plan(match.group(1))
        parse_stage(plan, match.group(2))  # raises StudyError naming the arm's stages when it is not one
