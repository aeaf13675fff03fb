"""Knowledge-distillation losses as pure JAX functions.

Every loss returns per-example (or per-anchor) values with no reduction over the batch, checks
dtypes and shapes up front (``ValueError`` naming the shapes received), and applies
:func:`jax.lax.stop_gradient` to the teacher's outputs, so no gradient ever reaches the teacher.
Temperatures and weights may be traced (vmapped or scheduled); sizes (relation heads) are static.

Logits (:mod:`.logits`), ``[..., num_classes] -> [...]``:

- :func:`kd_loss`, :func:`kd_loss_from_probs`, :func:`kd_ce_loss`: Hinton, Vinyals & Dean,
  "Distilling the Knowledge in a Neural Network", 2015 (``T^2`` KL; mix with hard labels).
- :func:`reverse_kd_loss`: the reverse KL ``KL(student || teacher)``.
- :func:`dkd_loss`, :func:`dkd_terms`: Zhao et al., "Decoupled Knowledge Distillation", CVPR
  2022 (TCKD and NCKD).
- :func:`standardized_kd_loss`, :func:`standardize_logits`: Sun et al., "Logit Standardization
  in Knowledge Distillation", CVPR 2024.

Features (:mod:`.features`), ``[batch, ...] -> [batch]`` or ``[..., dim] -> [...]``:

- :func:`hint_loss` with :func:`init_hint_projection` / :func:`apply_hint_projection`: Romero
  et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
- :func:`attention_transfer_loss`, :func:`attention_map`: Zagoruyko & Komodakis, "Paying More
  Attention to Attention", ICLR 2017.
- :func:`embedding_mse_loss`, :func:`cosine_distance_loss`: hidden-state matching (DistilBERT,
  TinyBERT).

Relations (:mod:`.relations`), ``[batch, ...] -> [batch]``; the batch-level losses return each
anchor's term, scaled so that ``.mean()`` is the paper's batch loss:

- :func:`similarity_preserving_loss`: Tung & Mori, "Similarity-Preserving Knowledge
  Distillation", ICCV 2019.
- :func:`rkd_distance_loss`, :func:`rkd_angle_loss`, :func:`rkd_loss`: Park et al., "Relational
  Knowledge Distillation", CVPR 2019.
- :func:`contrastive_loss`: InfoNCE with in-batch negatives (van den Oord et al. 2018; Tian et
  al., "Contrastive Representation Distillation", ICLR 2020).
- :func:`attention_distribution_loss`, :func:`value_relation_loss`: Wang et al., "MiniLM",
  NeurIPS 2020; :func:`relation_loss`, :func:`minilm_v2_loss`: Wang et al., "MiniLMv2", Findings
  of ACL 2021 (relation heads for different head counts).
"""

from smallsample.distill.features import (
    HintProjection,
    apply_hint_projection,
    attention_map,
    attention_transfer_loss,
    cosine_distance_loss,
    embedding_mse_loss,
    hint_loss,
    init_hint_projection,
)
from smallsample.distill.logits import (
    dkd_loss,
    dkd_terms,
    kd_ce_loss,
    kd_loss,
    kd_loss_from_probs,
    reverse_kd_loss,
    standardize_logits,
    standardized_kd_loss,
)
from smallsample.distill.relations import (
    attention_distribution_loss,
    contrastive_loss,
    minilm_v2_loss,
    relation_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    similarity_preserving_loss,
    value_relation_loss,
)

__all__ = [
    "HintProjection",
    "apply_hint_projection",
    "attention_distribution_loss",
    "attention_map",
    "attention_transfer_loss",
    "contrastive_loss",
    "cosine_distance_loss",
    "dkd_loss",
    "dkd_terms",
    "embedding_mse_loss",
    "hint_loss",
    "init_hint_projection",
    "kd_ce_loss",
    "kd_loss",
    "kd_loss_from_probs",
    "minilm_v2_loss",
    "relation_loss",
    "reverse_kd_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "similarity_preserving_loss",
    "standardize_logits",
    "standardized_kd_loss",
    "value_relation_loss",
]
