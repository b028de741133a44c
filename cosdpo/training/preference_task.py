"""The step of LLM preference training: what each objective's DPO loss is on a batch of pairs.

``PreferenceTask`` is the loop's task (``training/loop.py``) for Weight-COS-DPO and
DPO-LS: per-objective DPO sums, each pair at its own w or one w per step, the
metrics the run logs, and validation on held-out pairs. ``MODPOTask`` is
MO-DPO's (docs/method.md section 7), with ``modpo_margins`` from the other
objectives' own policies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.tokenize import PreferenceSet
from ..evaluation.preference import preference_front, sequence_scores
from ..losses import dpo, pair_logprobs, pair_window, weight_cos
from ..models.hpt import HPTModel
from ..models.llm import peft_wrapping
from ..simplex import draw_weights, weight_grid
from .reference import StepReference, reference_logprobs

if TYPE_CHECKING:  # the config lives with the recipe that imports this module
    from .llm import LLMConfig


def pair_weights(seed: int, step: int, alpha: float, k: int, records, objectives) -> torch.Tensor:
    """One w per pair, drawn from Dir(alpha + e_j) for a pair judged on objective j (``weight_sampling="pair"``).

    Why: with one w per step, a mixed batch weights each pair by w_j, and at
    a small alpha most w lie near a corner, so about half of every batch
    carries almost no gradient. Since w_j Dir(w; alpha) is proportional to
    Dir(w; alpha + e_j), E_w[sum_j w_j L_j(w)] = sum_j E[w_j] E_{w ~ Dir(alpha +
    e_j)}[L_j(w)]: drawing each pair's w from its objective's size-biased
    Dirichlet and weighting every objective by E[w_j] = 1/K is the same
    objective with every pair at full weight, and puts prefixes of several
    w in every batch. Each draw depends on (seed, step, record) only, so
    processes, micro-batches and resumed runs agree.
    """
    out = np.empty((len(records), k))
    for i, (rec, obj) in enumerate(zip(records, objectives)):
        conc = np.full(k, alpha)
        conc[obj] += 1.0
        out[i] = np.random.default_rng([seed, step, rec]).dirichlet(conc)
    return torch.tensor(out, dtype=torch.float32)


class PreferenceTask:
    """sum_k w_k DPO_k - lambda cos(w, L) on a batch of pairs of mixed objectives."""

    def __init__(self, cfg: LLMConfig, vali: PreferenceSet, accelerator=None):
        """``accelerator``: validation (and its reference) is split across its processes."""
        self.cfg, self.vali, self.accelerator = cfg, vali, accelerator
        self.step_reference: StepReference | None = None  # set for a run shorter than an epoch
        self.names = list(vali.objectives)
        self.tally: dict[int, dict] = {}  # step -> per-objective sums, read (and dropped) by train_step
        self.K = len(vali.objectives)
        self.grid = weight_grid(self.K, max(cfg.val_grid, self.K), "dirichlet", cfg.seed)

    def param_groups(self, model: HPTModel) -> list[dict]:
        """LoRA at ``lr``, the prefix at ``prompt_lr``: prompt tuning is known to need a far larger
        step than weight updates, and w reaches the loss only through the prefix."""
        prompt = [p for p in model.hpt.parameters() if p.requires_grad]
        ids = {id(p) for p in prompt}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest}, {"params": prompt, "lr": self.cfg.prompt_lr or self.cfg.lr}]

    def weights(self, step: int) -> torch.Tensor:
        if self.cfg.fixed_weights is not None:
            return torch.tensor(self.cfg.fixed_weights, dtype=torch.float32)
        if self.cfg.weight_sampling == "pair":  # wcos: the expected weights E[w] = 1/K; each pair has drawn its own w
            return torch.full((self.K,), 1.0 / self.K)
        return draw_weights(self.cfg.seed, step, self.cfg.alpha, self.K)

    def terms(self, model, batch, step):
        if self.cfg.weight_sampling == "pair" and self.cfg.fixed_weights is None:  # every pair (row) its own w
            w = pair_weights(
                self.cfg.seed, step, self.cfg.alpha, self.K, batch["records"].tolist(), batch["objective"].tolist()
            )
        else:
            w = self.weights(step)
        chosen, rejected, ref_c, ref_r = self._logprobs(model, batch, w.to(batch["input_ids"].device))
        per_pair, _ = dpo(chosen, rejected, ref_c, ref_r, self.cfg.beta, reduction="none")
        return self._sums(step, batch, chosen - ref_c, rejected - ref_r, per_pair)

    @staticmethod
    def _logprobs(model, batch, w):
        """(log pi chosen, log pi rejected, log pi_ref chosen, log pi_ref rejected) of the batch's packed
        pairs (one row each, ``pack_pairs``); without a cached reference, its forward runs here."""
        keep = pair_window(batch)
        chosen, rejected = pair_logprobs(model(batch["input_ids"], None, w, keep, packed=batch), batch)
        if "ref" in batch:
            ref = batch["ref"].to(chosen.dtype)
            return chosen, rejected, ref[:, 0], ref[:, 1]
        # no cache: the reference forward runs every step, as in TRL
        logits = getattr(model, "module", model).reference_logits(batch["input_ids"], None, keep, packed=batch)
        return (chosen, rejected, *pair_logprobs(logits, batch))

    def _sums(self, step, batch, chosen, rejected, per_pair):
        """Per-objective loss sums and pair counts, the step's metrics tallied on the way."""
        self._tally(step, batch["objective"], chosen, rejected)
        sums = torch.zeros(self.K, dtype=per_pair.dtype, device=per_pair.device).index_add(
            0, batch["objective"], per_pair
        )
        return sums, torch.bincount(batch["objective"], minlength=self.K)

    @torch.no_grad()
    def _tally(self, step: int, objective, chosen, rejected):
        """Per objective, sums over the step's pairs of what the training log reports: preference accuracy
        (a tie counts a half) and the implicit rewards beta (log pi - log pi_ref) of both responses."""
        chosen, rejected = self.cfg.beta * chosen.double(), self.cfg.beta * rejected.double()
        margin = chosen - rejected
        won = (margin > 0).double() + 0.5 * (margin == 0).double()
        new = {
            name: torch.zeros(self.K, dtype=torch.float64, device=margin.device).index_add(0, objective, v)
            for name, v in (
                ("accuracy", won),
                ("margin", margin),
                ("chosen_reward", chosen),
                ("rejected_reward", rejected),
            )
        }
        old = self.tally.get(step)
        self.tally[step] = new if old is None else {k: old[k] + new[k] for k in new}

    def counts(self, data: PreferenceSet, records) -> torch.Tensor:
        """Pairs per objective among ``records``, known before any forward (exact accumulation)."""
        return torch.bincount(torch.as_tensor(data.objective[np.asarray(records)]), minlength=self.K)

    def combine(self, losses, step):
        return weight_cos(losses, self.weights(step).to(losses.device), self.cfg.penalty)

    def before_step(self, model, step: int):
        """The loop's hook before each step: a run shorter than an epoch scores this step's new reference."""
        if self.step_reference is not None:
            self.step_reference.before_step(model, step)

    def validate(self, model) -> float:
        """Hypervolume of held-out accuracies over a small grid; one model for one w: w . accuracy."""
        if self.vali.ref is None or np.isnan(self.vali.ref).any():  # a short run scores it at its first validation
            reference_logprobs(model, {"vali": self.vali}, self.cfg, None, False, accelerator=self.accelerator)

        def scores_at(w):
            return sequence_scores(
                model,
                self.vali,
                torch.tensor(w, dtype=torch.float32),
                max_tokens=self.cfg.max_tokens,
                accelerator=self.accelerator,
            )

        if self.cfg.fixed_weights is not None:
            w = np.asarray(self.cfg.fixed_weights)
            return float(w @ np.asarray(preference_front(self.vali, w[None], scores_at, self.cfg.beta)["points"][0]))
        return preference_front(self.vali, self.grid, scores_at, self.cfg.beta)["hypervolume"]


class MODPOTask(PreferenceTask):
    """MO-DPO for one w (docs/method.md section 7): the first objective's pairs, on the logit
    (beta / w_1) (Delta log pi - Delta log pi_ref) - (1 / w_1) sum_{k>1} w_k Delta r_k,
    where r_k = beta (log pi_k - log pi_ref) is the implicit reward of objective k's own policy
    (``PreferenceSet.margin`` holds sum_k w_k Delta r_k per pair). That is DPO at temperature
    beta / w_1 against the chosen reference shifted by margin / beta, so the plain DPO loss serves.
    w_1 is floored at ``modpo_min_w1``.
    """

    def terms(self, model, batch, step):
        w1 = max(self.cfg.fixed_weights[0], self.cfg.modpo_min_w1)
        chosen, rejected, ref_c, ref_r = self._logprobs(model, batch, self.weights(step).to(batch["input_ids"].device))
        shifted = ref_c + batch["margin"].to(chosen.dtype) / self.cfg.beta
        per_pair, _ = dpo(chosen, rejected, shifted, ref_r, self.cfg.beta / w1, reduction="none")
        return self._sums(step, batch, chosen - ref_c, rejected - ref_r, per_pair)

    def combine(self, losses, step):
        return losses[0]


def modpo_margins(single_models, base, train_set: PreferenceSet, cfg: LLMConfig, progress: bool = False):
    """sum_{k>1} w_k (Delta log pi_k) per record, before the reference is known: the objectives' own
    policies (folders, in objective order from the second) scored one at a time on the base, then unloaded."""
    from peft import PeftModel

    w = np.asarray(cfg.fixed_weights, dtype=np.float64)
    if len(single_models) != len(w) - 1:
        raise ValueError(f"MO-DPO needs one single-objective policy per objective after the first ({len(w) - 1})")
    total = np.zeros(len(train_set))
    for k, folder in enumerate(single_models, start=1):
        with peft_wrapping():
            lora = PeftModel.from_pretrained(base, str(folder))
        single = HPTModel.from_pretrained(lora, folder).set_compute(cfg.precision, cfg.attention).eval()
        e_k = torch.eye(len(w))[k]  # an unconditioned policy ignores w; its prompt module still takes one
        lp = sequence_scores(single, train_set, e_k, max_tokens=cfg.max_tokens, progress=progress, desc=f"MO-DPO {k}")
        total += w[k] * (lp[train_set.chosen] - lp[train_set.rejected])
        lora.unload()
    return total
