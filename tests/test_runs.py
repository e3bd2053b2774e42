"""Run folders read back (status, top-1, ECE, wall time, histories) and progress computed from events."""
import json

from softlab.labels import generate_labels
from softlab.train import (EndEvent, EpochEvent, ErrorEvent, ProgressTracker, StartEvent, StepEvent, TrainConfig,
                           format_duration, list_runs, load_history, next_run_name, read_run, run_histories, train)
from tiny import LinearTeacher, NoiseImages


# ----- events with hand-set times
def start(at, total=10, start_step=0, steps_per_epoch=5, epochs=2):
    return StartEvent(run="r", recipe="fkd", epochs=epochs, steps_per_epoch=steps_per_epoch, total_steps=total,
                      start_step=start_step, run_dir="runs/r", time=at)


def step(at, number, loss=1.0, accuracy=0.5, images_per_s=100.0, total=10, steps_per_epoch=5):
    return StepEvent(run="r", epoch=(number - 1) // steps_per_epoch + 1, step=number, total_steps=total, loss=loss,
                     lr=0.1, accuracy=accuracy, images_per_s=images_per_s, teacher_forwards=0, time=at)


def test_format_duration():
    assert [format_duration(s) for s in (0, 7, 59.6, 725, 3723, None)] == ["0:00", "0:07", "1:00", "12:05",
                                                                         "1:02:03", "–"]


def test_eta_is_remaining_steps_times_measured_seconds_per_step():
    tracker = ProgressTracker()
    tracker(start(100.0))
    assert tracker.status == "running" and tracker.eta is None and tracker.seconds_per_step is None
    tracker(step(102.0, 1))
    tracker(step(104.0, 2))
    assert tracker.seconds_per_step == 2.0 and tracker.eta == 16.0 and tracker.fraction == 0.2
    assert tracker.elapsed == 4.0
    assert tracker.describe() == "step 2/10 · epoch 1/2 · 100 img/s · 0:04 elapsed · ETA 0:16"


def test_time_spent_paused_does_not_count():
    tracker = ProgressTracker()
    tracker(start(100.0))
    tracker(step(102.0, 1))
    tracker(step(104.0, 2))
    tracker.pause(104.0)
    assert tracker.status == "paused" and tracker.describe().endswith("0:04 elapsed · paused")
    tracker.resume(110.0)
    tracker(step(112.0, 3))
    # (112 − 100 − 6 paused) s over 3 steps = 2 s per step; 7 steps left
    assert tracker.status == "running" and tracker.elapsed == 6.0 and tracker.eta == 14.0


def test_a_pause_before_the_start_event_counts_from_the_start():
    tracker = ProgressTracker()
    tracker.pause(90.0)
    assert tracker.status == "paused" and tracker.describe() == "preparing the run… (paused)"
    tracker(start(100.0))
    tracker.resume(105.0)
    tracker(step(108.0, 1))
    assert tracker.elapsed == 3.0 and tracker.eta == 27.0


def test_a_resumed_run_measures_only_its_own_steps():
    tracker = ProgressTracker()
    tracker(start(0.0, start_step=4))
    assert (tracker.step, tracker.epoch, tracker.fraction) == (4, 0, 0.4)
    tracker(step(3.0, 5))
    assert tracker.seconds_per_step == 3.0 and tracker.eta == 15.0


def test_throughput_is_the_mean_over_the_last_steps():
    tracker = ProgressTracker(throughput_window=2)
    tracker(start(0.0))
    for number, rate in enumerate((10.0, 30.0, 50.0), start=1):
        tracker(step(float(number), number, images_per_s=rate))
    assert tracker.images_per_s == 40.0


def test_curves_history_and_end():
    tracker = ProgressTracker()
    tracker(start(0.0, total=4, steps_per_epoch=2, epochs=2))
    for number, loss in enumerate((2.0, 1.5, 1.2, 1.0), start=1):
        tracker(step(float(number), number, loss=loss, accuracy=number / 10, total=4, steps_per_epoch=2))
        if number % 2 == 0:
            tracker(EpochEvent(run="r", epoch=number // 2, epochs=2, metrics={"epoch": number // 2, "x": number}))
    tracker(EndEvent(run="r", status="finished", epoch=2, step=4, seconds=4.0, checkpoint="c.pt", metrics={},
                     time=5.0))
    assert tracker.curve_x == [0.5, 1.0, 1.5, 2.0] and tracker.curve_loss == [2.0, 1.5, 1.2, 1.0]
    assert tracker.curve_accuracy == [0.1, 0.2, 0.3, 0.4]
    assert tracker.history == [{"epoch": 1, "x": 2}, {"epoch": 2, "x": 4}]
    assert (tracker.status, tracker.eta, tracker.fraction, tracker.checkpoint) == ("finished", 0.0, 1.0, "c.pt")
    assert not tracker.active
    assert tracker.describe() == "step 4/4 · epoch 2/2 · 100 img/s · 0:05 elapsed · finished"
    assert tracker.step_curve(tracker.curve_loss, max_points=2) == ([0.75, 1.75], [1.75, 1.1])


def test_seeded_history_precedes_the_new_epochs():
    tracker = ProgressTracker()
    tracker(EpochEvent(run="r", epoch=2, epochs=2, metrics={"epoch": 2}))
    tracker.seed_history([{"epoch": 1}])
    assert tracker.history == [{"epoch": 1}, {"epoch": 2}]


def test_errors_end_the_run():
    tracker = ProgressTracker()
    tracker(start(0.0))
    tracker.pause(1.0)
    tracker(ErrorEvent(run="r", error="ValueError: boom", traceback="Traceback …", time=3.0))
    assert (tracker.status, tracker.error, tracker.eta, tracker.active) == ("error", "ValueError: boom", 0.0, False)


# ----- run folders
def write_run(folder, name, epochs, history, created, final=None, checkpoint=False, extra_line=""):
    run = folder / name
    run.mkdir(parents=True)
    config = TrainConfig(recipe="fkd", name=name, epochs=epochs, student="tiny_cnn").to_dict()
    (run / "config.json").write_text(json.dumps({"config": config, "created": created}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history) + extra_line)
    if final is not None:
        (run / "eval.json").write_text(json.dumps(final))
    if checkpoint:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.pt").write_bytes(b"")
    return run


def epoch_line(epoch, top1=None, ece=None, elapsed=1.0):
    line = {"epoch": epoch, "train_loss": 2.0 / epoch, "elapsed": elapsed}
    if top1 is not None:
        line.update(test_top1=top1, test_ece=ece)
    return line


def test_list_runs_reads_status_top1_ece_and_wall_time(tmp_path):
    write_run(tmp_path, "done", 2, [epoch_line(1, 0.5, 0.2, 3.0), epoch_line(2, 0.625, 0.125, 6.5)],
              "2024-01-02T00:00:00", final={"top1": 0.625, "ece": 0.125}, checkpoint=True)
    write_run(tmp_path, "halted", 3, [epoch_line(1, 0.375, 0.25, 2.5), epoch_line(2, elapsed=4.0)],
              "2024-01-01T00:00:00", checkpoint=True, extra_line='{"epoch": 3, "trai')
    write_run(tmp_path, "crashed", 2, [], "2024-01-03T00:00:00")
    (tmp_path / "not-a-run").mkdir()
    runs = list_runs(tmp_path)
    assert [r.name for r in runs] == ["halted", "done", "crashed"]
    halted, done, crashed = runs
    assert (done.status, done.epochs_done, done.top1, done.ece, done.wall_seconds) == ("finished", 2, 0.625, 0.125,
                                                                                       6.5)
    assert (halted.status, halted.epochs_done, halted.top1, halted.ece, halted.wall_seconds) == \
        ("stopped", 2, 0.375, 0.25, 4.0)
    assert (crashed.status, crashed.top1, crashed.ece, crashed.wall_seconds) == ("incomplete", None, None, None)
    assert (done.recipe, done.student, done.epochs) == ("fkd", "tiny_cnn", 2)
    assert list_runs(tmp_path / "missing") == [] and read_run(tmp_path / "not-a-run") is None
    assert run_histories([done, tmp_path / "halted"]) == {
        "done": [epoch_line(1, 0.5, 0.2, 3.0), epoch_line(2, 0.625, 0.125, 6.5)],
        "halted": [epoch_line(1, 0.375, 0.25, 2.5), epoch_line(2, elapsed=4.0)]}


def test_next_run_name(tmp_path):
    assert next_run_name(tmp_path, "fkd") == "fkd"
    (tmp_path / "fkd").mkdir()
    (tmp_path / "fkd-2").mkdir()
    assert next_run_name(tmp_path, "fkd") == "fkd-3" and next_run_name(tmp_path, "hard") == "hard"


def test_a_real_run_reads_back_and_its_events_give_its_metrics(tmp_path):
    data = NoiseImages(count=24)
    store = generate_labels(data, LinearTeacher(), tmp_path / "store", num_crops=8,
                            label_type="marginal_smoothing_k2", progress=False)
    tracker = ProgressTracker()
    config = TrainConfig(recipe="fkd", out=str(tmp_path / "runs"), student="tiny_cnn", student_kwargs={"width": 4},
                         input_size=12, epochs=2, batch_images=6, num_crops=2, lr=0.05, progress=False, seed=3,
                         eval_data=None)
    result = train(config, dataset=data, store=store, eval_data=NoiseImages(count=10, seed=1), callbacks=[tracker])
    [run] = list_runs(tmp_path / "runs")
    final = json.loads((tmp_path / "runs" / "fkd" / "eval.json").read_text())
    assert (run.status, run.top1, run.ece, run.epochs_done) == ("finished", final["top1"], final["ece"], 2)
    assert run.wall_seconds == result.history[-1]["elapsed"]
    history = load_history(run.run_dir)
    assert tracker.history == history == result.history
    assert (tracker.status, tracker.step, tracker.total_steps, tracker.fraction) == ("finished", 8, 8, 1.0)
    assert tracker.curve_x == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
