"""The once-an-epoch work of ``bmm`` and ``self_learning`` on a real run: what the pass over the training
set feeds the fit equals the same computed directly, and the metrics and outputs say what was learned."""

import numpy as np
import torch
import torch.nn.functional as F

from conftest import paper_prototypes
from ols.config import TrainConfig
from ols.distributed import DistContext
from ols.losses.noisy.beta_mixture import fit_losses
from ols.losses.noisy.self_learning import class_similarity
from ols.run_setup import build_run


def _run(tmp_path, loss, **loss_args):
    cfg = TrainConfig(dataset="digits", model="cnn", loss=loss, loss_args=loss_args, epochs=4, noise_rate=0.4,
                      batch_size=64, out=str(tmp_path / loss))
    return build_run(cfg, DistContext())


def _all_logits_and_features(r):
    feats = []
    handle = r.model.net.head.register_forward_pre_hook(lambda m, i: feats.append(i[0].flatten(1)))
    r.model.eval()
    with torch.no_grad():
        logits = torch.cat([r.model(x) for x, _ in r.source.held_out(r.train_index, 100)])
    handle.remove()
    r.model.train()
    return logits, torch.cat(feats)


def test_bmm_fits_the_mixture_to_every_training_samples_eval_loss(tmp_path):
    r = _run(tmp_path, "bmm", warmup_epochs=2)
    r.task.end_epoch(1, r.model)  # still warming up: nothing fitted
    assert not bool(r.criterion.fitted) and r.task.epoch_metrics() == {}
    r.task.end_epoch(2, r.model)
    logits, _ = _all_logits_and_features(r)
    labels = r.train_y[r.train_index]
    losses = F.cross_entropy(logits, labels, reduction="none")
    mixture, low, high = fit_losses(losses.numpy())
    crit = r.criterion
    fitted = np.array(mixture.alphas + mixture.betas + mixture.weights)
    np.testing.assert_allclose(crit.mixture.numpy(), fitted, rtol=1e-6)
    np.testing.assert_allclose(crit.table.numpy(), mixture.lookup(1), rtol=1e-6)
    noisy = crit.noisy_probability(losses)
    torch.testing.assert_close(crit.noisy_prob[r.train_index], noisy)
    corrected = torch.where(noisy > 0.5, logits.argmax(1), labels)
    assert torch.equal(crit.corrected[r.train_index], corrected)
    metrics = r.task.epoch_metrics()
    true = r.true_y[r.train_index]
    assert metrics["label_correction_acc"] == 100.0 * float((corrected == true).double().mean())
    outputs = r.task.run_outputs()
    assert set(outputs) == {"corrected_labels", "noisy_probability"}
    assert outputs["corrected_labels"].shape == (1438,)


def test_self_learning_corrects_every_label_from_the_prototypes_of_sampled_features(tmp_path):
    r = _run(tmp_path, "self_learning", initial_epochs=1, samples_per_class=12, prototypes=3)
    r.task.end_epoch(1, r.model)
    logits, features = _all_logits_and_features(r)
    noisy = r.noisy[r.train_index]
    rng = np.random.default_rng((0, 1, 0x5E1F))  # the draw the task makes: (seed, epoch, its stream)
    prototypes, owner = [], []
    for c in range(10):
        members = np.flatnonzero(noisy == c)
        pick = np.sort(rng.choice(r.train_index[members], size=12, replace=False))
        rows = np.searchsorted(r.train_index, pick)
        chosen = paper_prototypes(features[rows], p=3)
        prototypes.append(features[rows][chosen])
        owner += [c] * len(chosen)
    sigma = class_similarity(features, torch.cat(prototypes), torch.as_tensor(owner), 10)
    assert torch.equal(r.criterion.corrected[r.train_index], sigma.argmax(1))
    assert float(r.criterion.weight_now) == 0.5
    assert r.task.epoch_metrics()["label_correction_changed"] > 0
