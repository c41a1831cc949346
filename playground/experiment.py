"""What mode=train and mode=eval do, from a composed config to files in the run directory (translate and score:
inference.py; average: average.py; export: export.py)."""

import functools
import json
import logging
import signal
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from . import distributed, kernels  # kernels: registers build_model(..., kernels="fast")
from .checkpoint import (atomic_write, checkpoint_tokenizers, keep_last_checkpoints, load_to_resume,
                         rng_state, save_checkpoint)
from .checks import (DATA_FILE_KEYS, check_choices, check_decode, check_decode_vocabulary, check_lengths,
                     check_model, check_run_config, check_sweeper_direction, check_trainer, unread_dataset_files)
from .config import RETIRED_TRAINER_KEYS, upgrade_saved_config
from .data import MODEL_IDS, Data, load_data
from .data.synthetic import TASKS
from .distributed import Dist, sum_across
from .errors import UserError
from .diagnostics import log_attention, model_summary
from .doctor import Doctor, unk_shares
from .evaluate import evaluate, text_metrics
from .inference import model_from_checkpoint
from .model import build_model
from .perf import matmul_peak, training_flops
from .resume import (apply_learning_rate, best_checkpoint, check_held_out_test, check_resume, data_fingerprint,
                     restore_monitor, restore_training_state)
from .rundir import command_line, log_file_only, pasted_override, quoted_override
from .setup import (PRECISIONS, autocast_for, build_optimizer, build_scheduler, maybe_compile,
                    resolve_device, resolve_precision, resolve_recipe)
from .tracking import Tracker
from .train import BatchStream, LogWindow, Monitor, StopRequest, Training, carried_position, resolve_monitor, train

log = logging.getLogger(__name__)


def _kernels_line(choice: str) -> str:
    """The run's first log line: which code trains, and how to switch."""
    if choice == "reference":
        return ("kernels: reference (playground/model/ as written is what runs: edit it and see; "
                "trainer.kernels=fast for the faster drop-ins of playground/kernels/)")
    return ("kernels: fast (the drop-ins of playground/kernels/, each checked against the reference on this machine; "
            "trainer.kernels=reference runs playground/model/ as written)")


def _prepare_kernels(choice: str, device, precision: str) -> None:
    """For trainer.kernels=fast, check every kernel now for this device and dtype: a failure is one log line here,
    at startup, and that piece runs the reference code."""
    if choice == "fast":
        kernels.check_all(device, PRECISIONS[precision] or torch.float32)


def _sample_table(texts, predictions, tgt_tok, n) -> str:
    rows = ["| source | reference | prediction |", "|---|---|---|"]
    for i in range(min(n, len(predictions))):
        source, reference = texts[i]
        rows.append(f"| {source} | {reference} | {tgt_tok.decode(predictions[i])} |")
    return "\n".join(rows)


def _flops_counters(model_cfg, tgt_vocab, device, precision, d):
    """The model FLOPs of a step as a function of its shape, and this device's matrix-product peak (rank 0 only,
    which logs; half a second spent once) in the precision the matrix products run in: what perf/mfu divides."""
    m = model_cfg
    d_ff = m.d_ff * 3 // 2 if m.activation == "swiglu" else m.d_ff  # SwiGLU's W1 is twice as wide
    step_flops = functools.partial(training_flops, m.d_model, d_ff, m.enc_layers, m.dec_layers, tgt_vocab,
                                   qk_width=m.key_dim * m.heads if m.key_dim else None)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return step_flops, _peak(device, dtype) if d.is_main else None


@functools.cache
def _peak(device, dtype) -> float:
    """matmul_peak, measured once per process: the jobs of a sweep run in one process and share it."""
    return matmul_peak(device, dtype, seconds=0.5)


HPARAM_GROUPS = ("model", "dataset", "optimizer", "scheduler", "trainer", "decode")
HPARAM_METRICS = ("test/exact_match", "test/bleu", "test/token_accuracy", "test/loss", "test/nll",
                  "valid/exact_match", "valid/bleu", "valid/loss", "valid/nll")


def flat_hparams(cfg) -> dict:
    """The run's hyper-parameters as one flat dict: model.heads, optimizer.lr, ..., seed."""
    params = {f"{group}.{key}": value for group in HPARAM_GROUPS
              for key, value in OmegaConf.to_container(cfg[group], resolve=True).items()
              if not (group == "trainer" and key in RETIRED_TRAINER_KEYS)}  # now decode.*: not shown twice
    params["seed"] = cfg.seed
    return params


def _evaluator(model, data: Data, t, decoding, device, autocast, d: Dist):
    """evaluate(split) -> (metrics, predictions, hypotheses): model metrics summed over processes, then text
    metrics (BLEU, chrF, CER, WER) of the predictions, decoded as `decoding` (a DecodeConfig) says, against the
    reference text, gathered from all.
    predictions are this process's decoded ids; hypotheses the decoded text of every row, in the split's order."""
    def run(split):
        rows = torch.arange(len(data.splits[split])).tensor_split(d.world_size)[d.rank]  # rank 0 starts at row 0
        metrics, predictions = evaluate(model, data.splits[split], t.eval_batch_size, device, autocast,
                                        t.label_smoothing, decoding, rows=rows, reduce=lambda totals: sum_across(d, totals),
                                        loss_fn=kernels.loss_function(t.kernels))
        hypotheses = [data.tgt_tokenizer.decode(ids) for ids in predictions]
        references = [data.texts[split][i][1] for i in rows.tolist()]
        gathered = distributed.gather_to_main(d, (hypotheses, references))
        hypotheses = [h for hs, _ in gathered for h in hs]  # rank 0 holds the first rows: the split's order
        metrics.update(text_metrics(hypotheses, [r for _, rs in gathered for r in rs]))
        return metrics, predictions, hypotheses
    return run


def _flat_metrics(split: str, metrics: dict, step: int, extra: dict = None) -> dict:
    """metrics.json's content: `split/metric` keys, any extra ones, and the step of the weights measured."""
    return {**{f"{split}/{k}": v for k, v in metrics.items()}, **(extra or {}), "step": step}


def _write_metrics(run_dir: Path, flat: dict) -> None:
    atomic_write(run_dir / "metrics.json", lambda f: f.write((json.dumps(flat, indent=2) + "\n").encode()))


def _write_hypotheses(run_dir: Path, hypotheses, data: Data) -> None:
    """hypotheses.txt: the decoded output for each scored test pair, one a line, in the test split's order; and
    references.txt, the test split's reference of each (what playground.compare resamples)."""
    references = [reference for _, reference in data.texts["test"]]
    for name, lines in (("hypotheses.txt", hypotheses), ("references.txt", references)):
        text = "".join(line.replace("\n", " ") + "\n" for line in lines)
        atomic_write(run_dir / name, lambda f, text=text: f.write(text.encode()))


def _test_counts(data: Data) -> dict:
    """How many test pairs were scored, and how many of the test file's were not: a side empty, or too long for
    the length filter (dataset.too_long=filter)."""
    return {"test/pairs_scored": len(data.splits["test"]), "test/pairs_dropped": data.dropped.get("test", 0)}


def _check_sweeper_direction(mode: str) -> None:
    """A sweeper that optimises the returned monitor (Optuna) must look for it in the monitor's direction."""
    if HydraConfig.initialized():  # not from Python (playground.run), where there is no sweeper
        check_sweeper_direction(HydraConfig.get().sweeper.get("direction"), mode)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was saved; exit with 128 + the signal number. The
    message (how to resume) is rank 0's; the other processes of a torchrun exit with an empty one."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _directory_key() -> str:
    """The setting that names this run's directory: hydra.sweep.dir for a job of a sweep (-m), else hydra.run.dir."""
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return "hydra.sweep.dir" if multirun else "hydra.run.dir"


def _rest_of_the_sweep() -> str:
    """For a job of a sweep (-m): a line saying that the jobs after it did not run, which its resume command does not
    start (the sweep's summary is not written either)."""
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    return (f"\n(that resumes job {HydraConfig.get().job.num} of the sweep alone: the jobs after it did not run, and "
            f"the sweep has no summary; run them again with -m)")


def _resume_command(ckpt: Path, auto_resume: bool) -> str:
    """The command that continues this run, to paste as it is (quoted where a path holds a sweep job's "=" and ",";
    under torchrun, torchrun with as many processes)."""
    if not HydraConfig.initialized():  # run from Python (playground.run): there is no command to repeat
        return f"the same overrides and {quoted_override('ckpt_path', ckpt)}"
    overrides = HydraConfig.get().overrides.task
    if auto_resume:  # the same command again, into the same directory (HydraConfig: this run's own)
        run_dir = HydraConfig.get().runtime.output_dir
        given = any(o.startswith("hydra.run.dir=") for o in overrides)
        return command_line(*overrides, *([] if given else [quoted_override("hydra.run.dir", run_dir)]))
    return command_line(*[o for o in overrides if not o.startswith("ckpt_path=")], quoted_override("ckpt_path", ckpt))


def run_train(cfg, run_dir: Path) -> dict:
    """Train (or resume from ckpt_path), evaluating on valid every trainer.eval_every steps; test the best
    weights; write metrics.json. Under torchrun, every process runs this and rank 0 writes."""
    d = distributed.from_environment()
    t = check_run_config(cfg)  # before anything is read or downloaded; t: cfg.trainer as a plain dataclass
    monitor = Monitor(*resolve_monitor(t.monitor, t.monitor_mode, cfg.dataset.name not in TASKS), t.patience)
    _check_sweeper_direction(monitor.mode)
    cfg.trainer.monitor, cfg.trainer.monitor_mode = monitor.metric, monitor.mode  # recorded in the checkpoints
    if d.is_main:
        log.info(_kernels_line(t.kernels))
        if unread := unread_dataset_files(cfg.dataset):
            log.warning(unread)
    device = distributed.init(d, resolve_device(t.device))
    t.precision = cfg.trainer.precision = resolve_precision(device, t.precision)  # checkpoints record the one used
    run_dir = Path(distributed.from_main(d, str(run_dir)))  # rank 0's run directory is everyone's
    ckpt_dir = run_dir / "checkpoints"
    # a requeued job: this run directory's own last checkpoint (or another of its own checkpoints, named by ckpt_path:
    # an unreadable last.pt's way on), continued where it is
    own = bool(cfg.ckpt_path) and Path(cfg.ckpt_path).resolve().parent == ckpt_dir.resolve()
    in_place = t.auto_resume and (ckpt_dir / "last.pt").exists() and (own or not cfg.ckpt_path)
    if in_place:
        cfg.ckpt_path = str(Path(cfg.ckpt_path or ckpt_dir / "last.pt").resolve())
        if d.is_main:
            log.info(f"trainer.auto_resume=true: resuming this run directory from {cfg.ckpt_path}")
    elif (ckpt_dir / "last.pt").exists():
        again = " or continue it in place with trainer.auto_resume=true" if own else ""
        raise UserError(f"{run_dir} already holds a run's checkpoints: refusing to overwrite them "
                        f"(give this run its own directory with {_directory_key()}=...{again})")
    autocast = autocast_for(device, t.precision)
    resume = load_to_resume(cfg.ckpt_path) if cfg.ckpt_path else None
    if resume is not None:
        resume["config"] = upgrade_saved_config(resume["config"])  # a checkpoint of an earlier version, named as now
    recipe = resolve_recipe(cfg, t.max_steps, resume["config"] if resume else None)
    if d.is_main:
        log.info(recipe)
    config = _saved_config(cfg)
    fingerprint = data_fingerprint(config["dataset"])  # checkpoints record it: a resumed run reads the same data
    if resume is not None:
        changes = check_resume(cfg.ckpt_path, resume["config"], config, resume.get("data"), fingerprint,
                               t.resume_override, in_place)
        if changes and d.is_main:
            log.warning(f"trainer.resume_override=true: resuming with {'; '.join(changes)}")
    # a resumed run keeps its checkpoint's vocabularies, whatever the training file holds now
    data = load_data(cfg.dataset, tokenizers=checkpoint_tokenizers(resume, cfg.ckpt_path) if resume else None)
    torch.manual_seed(cfg.seed)
    check_model(cfg.model, data.src_tokenizer.vocab_size, data.tgt_tokenizer.vocab_size)
    check_decode_vocabulary(cfg.decode, data.tgt_tokenizer.vocab_size)
    _prepare_kernels(t.kernels, device, t.precision)
    model = build_model(cfg.model, data.src_tokenizer.vocab_size, data.tgt_tokenizer.vocab_size, t.kernels,
                        **MODEL_IDS).to(device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), device)
    scheduler = build_scheduler(cfg.scheduler, optimizer, t.max_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")  # fp16 gradients underflow without it
    start_step, position, best, best_weights = 0, 0, {}, None  # best: the valid metrics of the best evaluation
    best_state = best_source = None  # resumed: the checkpoint of the best evaluation, and its file
    if resume is not None:
        start_step, position = restore_training_state(resume, cfg.ckpt_path, model, optimizer, scheduler, scaler, t, d, cfg.seed)
        if cfg.optimizer.lr != resume["config"]["optimizer"]["lr"]:  # allowed by trainer.resume_override
            apply_learning_rate(optimizer, scheduler, cfg.optimizer.lr)
        best = dict(resume.get("best", best))
        restore_monitor(monitor, resume, best)
        best_state, best_source = best_checkpoint(cfg.ckpt_path, resume, best)
        if best_state is not None:
            best_weights = best_state["model"]
        elif best and d.is_main:  # its evaluations choose best.pt afresh, rather than test weights of another step
            log.warning(f"ckpt_path={cfg.ckpt_path}: the weights of its best evaluation (step {best['step']}) are not "
                        f"beside it (neither best.pt nor step_{best['step']}.pt is of that step): best.pt is chosen "
                        f"afresh from this run's evaluations")
        if best_state is None:
            best.clear()
            monitor.best, monitor.best_step, monitor.evals_since_best = None, None, 0
    else:
        torch.manual_seed(cfg.seed + d.rank)  # each process its own dropout; DDP gives all rank 0's weights
    log.info(f"model: {sum(p.numel() for p in model.parameters()):,} parameters on {device}, {t.precision}"
             f"{f', {d.world_size} processes' if d.enabled else ''}; data: "
             f"{', '.join(f'{k} {len(v)}' for k, v in data.splits.items())} examples"
             f"{f'; resuming at step {start_step}' if resume else ''}")

    if resume is not None and len(resume["rng"]) != d.world_size:  # another number of processes (resume_override)
        saved = resume["config"]
        position = carried_position(data.splits["train"], position, (saved["seed"], saved["trainer"]["batch_size"],
                                    saved["trainer"].get("max_tokens", 0), len(resume["rng"])),
                                    (cfg.seed, t.batch_size, t.max_tokens, d.world_size))
    # checks of the batch size against the data come before the first file is written: a run refused here leaves
    # its run directory free for the corrected command
    batches = BatchStream(data.splits["train"], t.batch_size, cfg.seed, d.world_size, d.rank, position, t.max_tokens)
    # continued in place: TensorBoard hides what the interrupted run logged after this checkpoint's step, which the
    # steps from here on log again
    tracker = Tracker(run_dir, enabled=d.is_main, purge_step=start_step + 1 if in_place else None)
    tracker.text("config", "```yaml\n" + OmegaConf.to_yaml(cfg) + "```", start_step)
    tracker.hparams(flat_hparams(cfg), HPARAM_METRICS)
    tracker.layout()
    if d.is_main:  # every module's parameters and output shape, for the first training batch
        rows = torch.arange(min(t.batch_size, 8, len(data.splits["train"])))  # max_tokens leaves batch_size unchecked
        src, tgt = (x.to(device) for x in data.splits["train"].batch(rows))
        tracker.text("model/summary", model_summary(model, src, tgt[:, :-1]), start_step)

    def report(message, step):
        if d.is_main:
            log.warning(message)
            tracker.text("doctor", message, step)

    doctor = Doctor(data.tgt_tokenizer.vocab_size, t.max_steps, report)  # signatures of a run going wrong
    doctor.check_data(unk_shares(data.splits["train"]), start_step)
    evaluate_split = _evaluator(model, data, t, OmegaConf.to_object(cfg.decode), device, autocast, d)
    tokenizers = {"src": data.src_tokenizer.to_dict(), "tgt": data.tgt_tokenizer.to_dict()}
    if d.is_main:  # the learned vocabularies, readable beside the checkpoints (which also carry them)
        for side, tokenizer in (("src", data.src_tokenizer), ("tgt", data.tgt_tokenizer)):
            if hasattr(tokenizer, "tokenizer"):
                tokenizer.tokenizer.save(str(run_dir / f"tokenizer_{side}.json"))
    # the new run directory holds its own best weights; continued in place from a step_N.pt, best.pt is that step's best
    if d.is_main and best_state is not None and best_source.resolve() != (ckpt_dir / "best.pt").resolve():
        save_checkpoint(ckpt_dir / "best.pt", best_state)

    def save(step, metrics=None, name="last.pt"):
        rngs = distributed.gather_to_main(d, rng_state())  # every process's generators, for an exact resume
        log_window = window.state_dict()  # the steps not logged yet
        if d.is_main:
            save_checkpoint(ckpt_dir / name, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "data_position": batches.position, "rng": rngs,
                "config": config, "tokenizers": tokenizers, "metrics": metrics or {}, "best": dict(best),
                "monitor": monitor.state_dict(), "data": fingerprint, "log_window": log_window})

    stopped_early = False  # by trainer.patience, before max_steps

    def on_eval(step) -> bool:
        nonlocal best_weights, stopped_early
        metrics, predictions, _ = evaluate_split("valid")
        metrics.update(log_attention(tracker, model, data, cfg.dataset.name if cfg.dataset.name in TASKS else None,
                                     device, step))  # heatmaps, entropy; on a synthetic task, valid/attention_alignment
        tracker.scalars({f"valid/{k}": v for k, v in metrics.items()}, step)
        doctor.on_eval(step, metrics)
        if d.is_main:
            tracker.text("valid/samples", _sample_table(data.texts["valid"], predictions, data.tgt_tokenizer,
                                                        t.num_samples), step)
            log.info(f"step {step}: " + ", ".join(f"valid/{k} {v:.4f}" for k, v in metrics.items()))
        if monitor.update({f"valid/{k}": v for k, v in metrics.items()}, step):
            best.clear()
            best.update(metrics, step=step)
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            save(step, metrics, "best.pt")
        save(step, metrics)
        if t.keep_last and d.is_main:
            keep_last_checkpoints(ckpt_dir, step, t.keep_last)
        stopped_early = monitor.exhausted and step < t.max_steps
        return monitor.exhausted

    step_flops, peak_flops = _flops_counters(cfg.model, data.tgt_tokenizer.vocab_size, device, t.precision, d)
    run = Training(model=maybe_compile(DistributedDataParallel(model) if d.enabled else model, t.compile, device,
                                       log.warning, log.info if d.is_main else lambda message: None),
                   optimizer=optimizer, scheduler=scheduler, scaler=scaler, loss_fn=kernels.loss_function(t.kernels),
                   pad_id=MODEL_IDS["pad_id"], device=device, autocast=autocast, dist=d, step_flops=step_flops,
                   peak_flops=peak_flops)
    window = LogWindow(run, start_step)
    if resume is not None:
        window.load_state_dict(resume.get("log_window"), t.log_every)
    with StopRequest() as stop:
        last = train(run, t, data.splits["train"], batches, tracker, on_eval, save, start_step, stop, doctor.on_log,
                     window)
    if stopped_early:  # not a run that reached max_steps, nor one stopped by a signal before an evaluation
        if d.is_main:
            log.info(f"{monitor.reason()}; testing best.pt")
    elif last < t.max_steps:
        tracker.close()
        ckpt = (ckpt_dir / "last.pt").resolve()
        raise Interrupted(f"stopped at step {last} by {signal.Signals(stop.signal).name}; saved {ckpt}\n"
                          f"resume with: {_resume_command(ckpt, t.auto_resume)}{_rest_of_the_sweep()}" if d.is_main
                          else "", 128 + stop.signal)

    if best_weights is not None:
        model.load_state_dict(best_weights)
    if d.is_main:
        log.info(f"testing the weights of step {best.get('step', last)}"
                 + (f" (best.pt, by {monitor.metric})" if best_weights is not None else ""))
    try:
        metrics, _, hypotheses = evaluate_split("test")
    except KeyboardInterrupt:  # training is over and saved: say where, and how to test it later
        tracker.close()
        best_file = (ckpt_dir / ("best.pt" if (ckpt_dir / "best.pt").exists() else "last.pt")).resolve()
        raise Interrupted(f"stopped by SIGINT during the final test evaluation (no metrics.json); the checkpoints "
                          f"are in {ckpt_dir.resolve()}\ntest them with: python transformer_playground.py mode=eval "
                          f"{pasted_override('ckpt_path', best_file)}" if d.is_main else "", 130) from None
    tracker.scalars({f"test/{k}": v for k, v in metrics.items()}, last)
    if doctor.found and d.is_main:
        log.warning(f"the run doctor saw {len(doctor.found)} sign{'s' * (len(doctor.found) > 1)} of trouble in this "
                    f"run:\n{doctor.summary()}")
        tracker.text("doctor", f"At the end of the run:\n\n{doctor.summary()}", last)
    tracker.close()
    valid = {f"valid/{k}": v for k, v in best.items() if k != "step"}  # the chosen weights' validation scores
    flat = _flat_metrics("test", metrics, best.get("step", last), {
        **_test_counts(data), **valid, "monitor": monitor.metric, "monitor_mode": monitor.mode,
        "last_step": last, "doctor": "; ".join(doctor.found)})
    if d.is_main:
        _write_metrics(run_dir, flat)
        _write_hypotheses(run_dir, hypotheses, data)
        _report(flat, run_dir)
    distributed.shutdown(d)
    return flat


def _saved_config(cfg) -> dict:
    """The run's config as checkpoints record it, with the data files' absolute paths: eval and translate run
    from anywhere, and resume compares it with the new run's."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in ("train_file", "valid_file", "test_file", "hub_name"):
        if config["dataset"].get(key) and Path(config["dataset"][key]).exists():
            config["dataset"][key] = str(Path(config["dataset"][key]).resolve())
    return config


def _report(flat: dict, run_dir: Path) -> None:
    """The final metrics: a table on the console, and one line in the run's log file, which the console has seen."""
    width = max(map(len, flat))
    print("\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}"
                    for k, v in flat.items() if v != ""))
    print(f"run directory: {run_dir}\nview it with:  tensorboard --logdir {run_dir}")
    scores = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in flat.items() if k.startswith("test/"))
    log_file_only(log, f"step {flat['step']}: {scores} (in metrics.json)")



def run_eval(cfg, run_dir: Path) -> dict:
    """Evaluate a checkpoint on the test split of the dataset it was trained on; write metrics.json here."""
    check_choices(cfg)
    t = OmegaConf.to_object(cfg.trainer)
    check_trainer(t)
    check_decode(cfg.decode, t)
    device = resolve_device(t.device)
    t.precision = resolve_precision(device, t.precision)
    autocast = autocast_for(device, t.precision)
    _prepare_kernels(t.kernels, device, t.precision)
    model, saved, src_tok, tgt_tok, state = model_from_checkpoint(cfg)
    check_decode_vocabulary(cfg.decode, tgt_tok.vocab_size)
    model.to(device)
    # the checkpoint's dataset, with any dataset.* given on this command line (another test_file, say)
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []  # none from Python
    given = [o for o in overrides if o.startswith("dataset.")]
    dataset = OmegaConf.merge(saved.dataset, OmegaConf.from_dotlist([o[len("dataset."):] for o in given]))
    files = [o for o in given if o.partition("=")[0].removeprefix("dataset.") in DATA_FILE_KEYS]
    if files and dataset.name in TASKS:  # its generated pairs would be scored, not the file given
        raise UserError(f"{files[0]}: the model of ckpt_path={cfg.ckpt_path} learnt dataset={dataset.name}, whose "
                        f"test pairs are generated, so mode=eval reads no file: remove it")
    if unread := unread_dataset_files(dataset):  # files the checkpoint's own config names
        log.warning(unread)
    check_lengths(saved.model, dataset, checkpoint=cfg.ckpt_path)
    if dataset.name not in TASKS:
        check_held_out_test(cfg.ckpt_path, dataset, saved.dataset, state.get("data"))
    data = load_data(dataset, tokenizers=(src_tok, tgt_tok), splits=("test",))  # the training file is not read
    log.info(f"evaluating {cfg.ckpt_path} (step {state['step']}) on {len(data.splits['test'])} test pairs")
    metrics, _, hypotheses = _evaluator(model, data, t, OmegaConf.to_object(cfg.decode), device, autocast, Dist())("test")
    flat = _flat_metrics("test", metrics, state["step"], _test_counts(data))
    _write_metrics(Path(run_dir), flat)
    _write_hypotheses(Path(run_dir), hypotheses, data)
    _report(flat, Path(run_dir))
    return flat
