"""OLS inside a real Hugging Face Trainer (offline, a tiny BERT built from a config): gradient
accumulation does not scale the gradient, evaluation never reaches the soft labels, epochs
step the loss, and a resumed run, mid-epoch too, ends with the uninterrupted run's soft labels."""

import warnings

import pytest
import torch

from ols import OnlineLabelSmoothing

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from ols.integrations.hf import OLSTrainerHook  # noqa: E402

K, N, T = 3, 32, 6


def model():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=T,
                                     num_labels=K, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


def rows():
    """Class c's sequences use tokens 10c..10c+9, so the model learns quickly and many rows count."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(N):
        y = i % K
        out.append({"input_ids": torch.randint(10 * y, 10 * y + 10, (T,), generator=g),
                    "attention_mask": torch.ones(T, dtype=torch.long), "labels": torch.tensor(y)})
    return out


def arguments(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=2,
                learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0,
                report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True,
                seed=3, dataloader_num_workers=0)
    base.update(kw)
    return transformers.TrainingArguments(**base)


def fit(tmp_path, crit, resume=None, **kw):
    hook = OLSTrainerHook(crit)
    trainer = transformers.Trainer(model=model(), args=arguments(tmp_path, **kw), train_dataset=rows(),
                                   eval_dataset=rows(), compute_loss_func=hook, callbacks=[hook])
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def first_update(tmp_path, **kw):
    trainer = fit(tmp_path, OnlineLabelSmoothing(K), max_steps=1, **kw)
    start = model()
    return {name: p.detach() - start.state_dict()[name] for name, p in trainer.model.named_parameters()}


@pytest.mark.slow
def test_gradient_accumulation_gives_the_same_update_as_one_big_batch(tmp_path):
    big = first_update(tmp_path / "a", per_device_train_batch_size=16, gradient_accumulation_steps=1)
    accumulated = first_update(tmp_path / "b", per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert max(float(d.abs().max()) for d in big.values()) > 1e-3
    for name in big:  # a plain mean as compute_loss_func gives twice this update
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_epochs_step_the_loss_and_evaluation_never_reaches_it(tmp_path):
    crit = OnlineLabelSmoothing(K)
    trainer = fit(tmp_path, crit)
    assert int(crit.store.num_updates) == 2 and float(crit.store.sums.abs().sum()) == 0.0
    assert crit.soft_labels[0, 0] > 1 / K
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "training-mode forward under no_grad" warning
        metrics = trainer.evaluate()
    assert "eval_loss" in metrics and float(crit.store.sums.abs().sum()) == 0.0
    assert crit.training is False  # left in eval mode by evaluate(); the next training call switches back


@pytest.mark.slow
@pytest.mark.parametrize("resume_step", [2, 3])  # an epoch boundary, and mid-epoch (sums in flight)
def test_a_resumed_trainer_keeps_the_soft_labels(tmp_path, resume_step):
    whole = OnlineLabelSmoothing(K)
    fit(tmp_path / "whole", whole, save_strategy="steps", save_steps=1)
    assert (tmp_path / "whole" / f"checkpoint-{resume_step}" / "ols_loss.pt").is_file()
    resumed = OnlineLabelSmoothing(K)  # a new process: a new loss, filled from the checkpoint
    fit(tmp_path / "whole", resumed, resume=str(tmp_path / "whole" / f"checkpoint-{resume_step}"),
        save_strategy="no")
    assert int(resumed.store.num_updates) == 2
    torch.testing.assert_close(resumed.soft_labels, whole.soft_labels, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_checkpoint_without_the_loss_state_is_refused(tmp_path):
    args = arguments(tmp_path, save_strategy="steps", save_steps=2, max_steps=2)
    trainer = transformers.Trainer(model=model(), args=args, train_dataset=rows())
    trainer.train()  # no hook: the checkpoint has no soft labels
    with pytest.raises(ValueError, match="ols_loss.pt is missing.*resume_from=FOLDER"):
        fit(tmp_path, OnlineLabelSmoothing(K), resume=str(tmp_path / "checkpoint-2"))


@pytest.mark.slow
def test_eval_loss_ce_is_cross_entropy_against_the_labels(tmp_path):
    hook = OLSTrainerHook(OnlineLabelSmoothing(K), eval_loss="ce")
    trainer = transformers.Trainer(model=model(), args=arguments(tmp_path), train_dataset=rows(),
                                   eval_dataset=rows(), compute_loss_func=hook, callbacks=[hook])
    trainer.train()
    got = trainer.evaluate()["eval_loss"]
    net = trainer.model.eval()
    with torch.no_grad():
        batch = {k: torch.stack([r[k] for r in rows()]) for k in ("input_ids", "attention_mask")}
        logits = net(**batch).logits
    labels = torch.stack([r["labels"] for r in rows()])
    assert got == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-4)
    default = OLSTrainerHook(hook.loss)  # the default: the loss itself, against its soft labels
    with torch.no_grad():
        own = default({"logits": logits}, labels, num_items_in_batch=torch.tensor(len(labels)))
    assert float(own) == pytest.approx(float(hook.loss.eval()(logits, labels)), rel=1e-5)
    assert abs(float(own) - got) > 1e-4  # the soft labels are not one-hot
    with pytest.raises(ValueError, match="eval_loss must be 'loss' or 'ce'"):
        OLSTrainerHook(OnlineLabelSmoothing(K), eval_loss="nll")


def test_token_logits_are_flattened_and_a_stateless_loss_is_refused():
    crit = OnlineLabelSmoothing(K)
    hook = OLSTrainerHook(crit)
    logits, labels = torch.randn(2, 4, K), torch.tensor([[0, 1, -100, 2], [1, 1, 0, -100]])
    got = hook({"logits": logits}, labels, num_items_in_batch=torch.tensor(12))
    flat = OnlineLabelSmoothing(K, reduction="sum").eval()(logits.reshape(-1, K), labels.reshape(-1))
    torch.testing.assert_close(got, flat / 12)
    with pytest.raises(ValueError, match="not a periodic loss"):
        OLSTrainerHook(torch.nn.CrossEntropyLoss())


@pytest.mark.slow
def test_the_hook_used_only_as_compute_loss_func_warns_at_once(tmp_path):
    hook = OLSTrainerHook(OnlineLabelSmoothing(K))
    trainer = transformers.Trainer(model=model(), args=arguments(tmp_path, max_steps=2), train_dataset=rows(),
                                   compute_loss_func=hook)  # not among the callbacks: never stepped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    msgs = [str(w.message) for w in caught if "not among its callbacks" in str(w.message)]
    assert len(msgs) == 1 and "callbacks=[hook]" in msgs[0]
    assert int(hook.loss.store.num_updates) == 0  # what the warning is about


@pytest.mark.slow
def test_the_hook_feeds_maxsup_the_runs_progress(tmp_path, monkeypatch):
    from ols.losses.maxsup import MaxSup

    seen = []
    monkeypatch.setattr(MaxSup, "set_progress", lambda self, f: seen.append(f))
    fit(tmp_path, MaxSup(K), num_train_epochs=4)
    assert seen == [0.0, 0.25, 0.5, 0.75]


@pytest.mark.slow
def test_a_checkpoint_copied_outside_output_dir_resumes_with_its_soft_labels(tmp_path):
    import shutil

    whole = OnlineLabelSmoothing(K)
    fit(tmp_path / "whole", whole, save_strategy="steps", save_steps=1)
    elsewhere = tmp_path / "kept" / "checkpoint-3"  # mid-epoch: sums in flight
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", elsewhere)
    shutil.rmtree(tmp_path / "whole")
    resumed = OnlineLabelSmoothing(K)
    fit(tmp_path / "new-output", resumed, resume=str(elsewhere), save_strategy="no")
    assert int(resumed.store.num_updates) == 2
    torch.testing.assert_close(resumed.soft_labels, whole.soft_labels, rtol=1e-5, atol=1e-6)


def test_no_labels_names_label_names():
    """A forward without a ``labels`` argument makes the Trainer drop the column: one line says so."""
    hook = OLSTrainerHook(OnlineLabelSmoothing(K))
    with pytest.raises(ValueError, match=r"got no labels.*label_names=\['labels'\]"):
        hook({"logits": torch.randn(2, K)}, None, 2)
