"""The ``sft`` job: the LoRA SFT baseline on ESConv-format data (TRL SFTTrainer).

    python -m therapy_rlhf.jobs sft --run-config examples/tiny-local.yaml --round 0 --store ./local-store

Each supporter reply becomes a conversational prompt/completion example
(context messages -> the supporter's reply), so the loss is on the reply only
and the chat template formats both sides. A whole-dataset JSON file (such as
``ESConv.json``) is split by conversation (``data.load_split``): SFT trains on
its train split and validates on its dev split, and never sees the test
split that the evaluate job uses. A file that is already a split (a TSV, the
fixture, ``split: all``) has ``sft.validationFraction`` of its conversations
held out instead. Validation loss is computed every ``sft.evalSteps`` and
once at the end; training stops after ``sft.earlyStoppingPatience``
evaluations without improvement and the best adapter (lowest validation
loss) is kept. Writes the adapter under ``sft/adapter/`` and then, last,
``sft/metrics.json``.

Reproducible on CPU: the LoRA weights are initialised right after seeding
with ``sft.seed`` (the trainer seeds only later, when it is built), so the
same spec gives the same adapter bit for bit.
"""

from __future__ import annotations

import math
import random
from typing import Any

from therapy_rlhf.jobs import data, distributed, models
from therapy_rlhf.jobs.common import JobContext, JobError

MIN_IMPROVEMENT = 1e-6
# Room for the reply when trimming old turns from a long context.
RESPONSE_TOKEN_RESERVE = 128


def split_examples(examples: list[data.Example], fraction: float, seed: int) -> tuple[list, list]:
    """Hold out about ``fraction`` of the examples, whole conversations at a time.

    Examples of one conversation share their context, so splitting inside a
    conversation would put validation text into training. Conversations are
    shuffled deterministically and moved to validation until it has its share;
    both sides get at least one example. A dataset of a single conversation
    can only be split by example.
    """
    if len(examples) < 2:
        raise JobError(f"sft needs at least 2 examples for a train/validation split, the dataset has {len(examples)}")
    groups: dict[str, list[data.Example]] = {}
    for ex in examples:
        groups.setdefault(ex.conversation or ex.id, []).append(ex)
    if len(groups) == 1:
        groups = {ex.id: [ex] for ex in examples}
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    want = max(1, round(len(examples) * fraction))
    val: list[data.Example] = []
    while order[1:] and len(val) < want:
        val.extend(order.pop(0))
    return [ex for group in order for ex in group], val


def select_examples(sft) -> tuple[data.Selection, data.Selection]:
    """(train, validation): the train and dev splits of a whole dataset, or a held-out
    ``validationFraction`` of the conversations of a file that is already a split."""
    train = data.load_split(sft.dataset, "train")
    if not train.presplit:
        return train, data.load_split(sft.dataset, "dev")
    train_ex, val_ex = split_examples(train.examples, sft.validation_fraction, sft.seed)
    held_out = data.Selection(val_ex, train.source, train.split, True, len({e.conversation or e.id for e in val_ex}))
    kept = data.Selection(train_ex, train.source, train.split, True, len({e.conversation or e.id for e in train_ex}))
    return kept, held_out


def to_records(examples: list[data.Example], tokenizer: Any, max_length: int, system: str | None = None) -> list[dict]:
    """Prompt/completion conversations, each prompt led by the run's system message (as every rollout is)."""
    budget = max(16, max_length - RESPONSE_TOKEN_RESERVE)
    return [
        {
            "prompt": models.with_system(models.trim_context(tokenizer, ex.prompt_messages(), budget, system), system),
            "completion": [{"role": "assistant", "content": ex.response}],
        }
        for ex in examples
    ]


def make_early_stopping(model: Any, patience: int, ctx: JobContext):
    """A callback that keeps the best adapter weights and stops after ``patience`` bad evaluations."""
    from peft import get_peft_model_state_dict
    from transformers import TrainerCallback

    class EarlyStopOnValidationLoss(TrainerCallback):
        def __init__(self) -> None:
            self.best = math.inf
            self.best_step = 0
            self.best_state: dict | None = None
            self.bad = 0
            self.stopped_early = False
            self.history: list[dict] = []

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            loss = float((metrics or {}).get("eval_loss", math.nan))
            self.history.append({"step": state.global_step, "eval_loss": round(loss, 6)})
            ctx.progress("step %d: validation loss %.4f", state.global_step, loss)
            if loss < self.best - MIN_IMPROVEMENT:
                self.best, self.best_step, self.bad = loss, state.global_step, 0
                self.best_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
            else:
                self.bad += 1
                if self.bad >= patience and state.global_step < state.max_steps:
                    self.stopped_early = True
                    control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                ctx.progress("step %d: train loss %.4f", state.global_step, logs["loss"])

        def restore_best(self) -> None:
            from peft import set_peft_model_state_dict

            if self.best_state is not None:
                set_peft_model_state_dict(model, self.best_state)

    return EarlyStopOnValidationLoss()


def main(ctx: JobContext) -> None:
    spec = ctx.spec
    sft = spec.sft
    if not sft.enabled:
        raise JobError("sft.enabled is false in this run; there is nothing for the sft job to do")
    train_sel, val_sel = select_examples(sft)
    train_ex, val_ex = train_sel.examples, val_sel.examples
    validation = "dev split" if not val_sel.presplit else f"held out {sft.validation_fraction:g} of the conversations"
    ctx.progress(
        "dataset %s: %d train examples from %d conversations (%s), %d validation examples from %d conversations (%s)",
        train_sel.source, len(train_ex), train_sel.conversations, train_sel.describe()["split"],
        len(val_ex), val_sel.conversations, validation,
    )

    # Under accelerate launch: NCCL bound to this rank's GPU before TRL's Accelerator reuses the group.
    distributed.join(ctx.device)
    from transformers import set_seed

    model, tokenizer = models.load_base_model(spec.model, ctx.device, ctx.cache_dir)
    dtype = model.dtype
    model = models.prepare_for_training(model, spec.model, ctx.device)
    # Seed right before the fresh LoRA is drawn (the trainer seeds only when it is built, and
    # loading may or may not have used the generator, e.g. building a tiny model on first use).
    set_seed(sft.seed)
    model = models.attach_adapter(model, spec.model, None, trainable=True)

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    system = spec.model.system_message
    train_ds = Dataset.from_list(to_records(train_ex, tokenizer, spec.model.max_length, system))
    val_ds = Dataset.from_list(to_records(val_ex, tokenizer, spec.model.max_length, system))
    out_dir = ctx.scratch("trainer")
    config = SFTConfig(
        output_dir=str(out_dir),
        max_length=spec.model.max_length,
        num_train_epochs=sft.epochs,
        max_steps=sft.max_steps or -1,
        learning_rate=sft.learning_rate,
        per_device_train_batch_size=sft.batch_size,
        per_device_eval_batch_size=sft.batch_size,
        gradient_accumulation_steps=sft.gradient_accumulation_steps,
        eval_strategy="steps",
        eval_steps=sft.eval_steps,
        save_strategy="no",
        logging_steps=max(1, min(sft.eval_steps, 10)),
        report_to="none",
        disable_tqdm=True,
        seed=sft.seed,
        data_seed=sft.seed,
        use_cpu=not ctx.device.startswith("cuda"),
        # Gradient checkpointing is set up by models.prepare_for_training (on GPU, when
        # model.gradientCheckpointing asks); TRL's SFTConfig defaults its own switch to on,
        # which would override model.gradientCheckpointing: false, so it is turned off here.
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        **models.mixed_precision(dtype, ctx.device),
    )
    early = make_early_stopping(model, sft.early_stopping_patience, ctx)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        callbacks=[early],
    )
    # our callback logs losses with timestamps; the default printer would repeat them as dicts
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    ctx.begin_work()
    result = trainer.train()
    if not early.history or early.history[-1]["step"] != trainer.state.global_step:
        trainer.evaluate()  # a last validation pass on the final weights
    early.restore_best()

    adapter_dir = ctx.scratch("adapter")
    trainer.model.save_pretrained(str(adapter_dir))
    ctx.upload_dir(adapter_dir, ctx.paths.sft_adapter())
    ctx.write_metrics(
        ctx.paths.sft_metrics(),
        {
            "train_loss": round(float(result.training_loss), 6),
            "eval_loss": round(early.best, 6),
            "best_step": early.best_step,
            "steps": trainer.state.global_step,
            "epochs": round(float(trainer.state.epoch or 0.0), 4),
            "stopped_early": early.stopped_early,
            "eval_history": early.history,
            "train_examples": len(train_ex),
            "validation_examples": len(val_ex),
            "train_conversations": train_sel.conversations,
            "validation_conversations": val_sel.conversations,
            "dataset": train_sel.source,
            "train_split": train_sel.describe()["split"],
            "validation_split": validation,
            "seed": sft.seed,
            "model": spec.model.source,
            "adapter": ctx.paths.sft_adapter(),
            "gradient_checkpointing": any(getattr(m, "gradient_checkpointing", False) is True for m in trainer.model.modules()),
            **models.count_parameters(trainer.model),
        },
    )
