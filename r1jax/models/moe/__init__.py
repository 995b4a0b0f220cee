"""DeepSeekMoE: router, expert dispatches, auxiliary-loss-free balancing.

DeepSeek-V3 report (arXiv:2412.19437):
  Sec. 2.1.2  h'_t = u_t + sum_i FFN^(s)_i(u_t) + sum_i g_{i,t} FFN^(r)_i(u_t) (eq. 12), with
              affinities s_{i,t} = Sigmoid(u_t^T e_i) (eq. 15), experts chosen by top-K_r of
              s_{i,t} + b_i (eq. 16, the bias b_i enters selection only), gate values g_{i,t}
              from the unbiased s_{i,t}, normalised over the selected experts (eq. 13); b_i
              moves by gamma after each step towards balance. Node-limited routing is the group
              restriction (`n_group`, `topk_group`) of HF `DeepseekV3TopkRouter`.
  Sec. 2.1.3  the complementary sequence-wise balance loss L_Bal (eqs. 17-20), sown as
              'aux_loss' and scaled by alpha = `aux_loss_alpha`.
  Sec. 3.2.2  expert parallelism: tokens sent to their experts' devices by all-to-all.

One concern per module, each readable alone:
  routing.py          `Router`; affinities, group-limited top-K selection, gates (eqs. 13-16)
  balancing.py        expert loads, the bias update, L_Bal (eqs. 17-20), their tree helpers
  dispatch.py         `ExpertParams`, the dispatch signature, `take_rows`, `combine`,
                      `token_local` (each device dispatches its own tokens under a mesh); the
                      dense (reference) and gather (decoding) dispatches
  dropless.py         the sorted, block-padded dropless dispatch (prefill, training; CPU default)
  grouped.py          the sorted grouped-matmul dispatch, `jax.lax.ragged_dot` (GPU/TPU default)
  expert_parallel.py  experts over the `expert` mesh axis: ragged all-to-all of the real rows,
                      grouped matmul on each device's experts
  layer.py            `MoE` and `Experts`: the layer, and the dispatch chosen once from the config
                      ("auto": by backend)

Where this departs from the paper, and why:
  * Selection follows HF transformers `DeepseekV3TopkRouter` exactly (checkpoint parity):
    a group's score is the sum of its top-2 biased scores, and experts of dropped groups get a
    biased score of -inf, as in transformers 5.x and the official inference code (transformers
    4.x filled 0.0, which lets a dropped group's expert win when kept biased scores are
    negative). Gate values are multiplied by `routed_scaling_factor`, and normalisation adds
    1e-20 to the denominator.
  * `scoring_func="softmax"` (DeepSeek-V2) uses the same path; with n_group == 1 and
    norm_topk_prob False it is V2's greedy top-k.
  * L_Bal's f_i counts the experts actually chosen (biased, group-limited selection) rather
    than the unbiased top-K of eq. 18: the loss balances the load the experts really receive.
  * Expert parallelism keeps XLA's static shapes, so to stay dropless (exact) each device's
    receive buffer holds the worst case (n_ep * T * min(K, E / n_ep) rows); only the real rows
    are exchanged (on GPU/TPU) and computed (see `expert_parallel`).

Parameters (per MoE layer), kernels stored [in, out] as in `layers.Dense`:
  gate/kernel [d, E] ('embed', 'expert'); gate/e_score_correction_bias [E] float32 (state: the
  trainer updates it with `update_all_biases` and keeps it out of the optimizer);
  experts/{gate_proj, up_proj} [E, d, f], experts/down_proj [E, f, d]; shared_experts/... (a
  `layers.MLP` of width n_shared_experts * moe_intermediate_size).

The names the decoder, trainers and checkpoint code use are re-exported here (`moe.MoE`,
`moe.BIAS`, `moe.EXPERT_LOAD`, `moe.AUX_LOSS`, `moe.total_aux_loss`, `moe.collect_expert_loads`,
`moe.update_all_biases`); everything else is reached through its module.
"""

from r1jax.models.moe.balancing import (
    AUX_LOSS,
    EXPERT_LOAD,
    collect_expert_loads,
    total_aux_loss,
    update_all_biases,
)
from r1jax.models.moe.layer import MoE
from r1jax.models.moe.routing import BIAS

__all__ = ["AUX_LOSS", "BIAS", "EXPERT_LOAD", "MoE", "collect_expert_loads", "total_aux_loss",
           "update_all_biases"]
