"""Train: local epochs from the global model, the encoded update, the commit."""

from __future__ import annotations

import asyncio
import logging

import torch

from node import weights
from node.compression import raw_bytes
from node.gossip import ReceivedModel
from node.privacy import DPSGD, round_cost
from node.stages import gossip, wait
from node.stages.console import send, training_refusal
from node.training import evaluate, train_local
from node.workflow import NodeContext, RoundStage, Stage
from transport import messages as m
from transport.tensors import model_hash

log = logging.getLogger(__name__)


class TrainStage(RoundStage):
    """Local epochs from the global model; evaluate; commit hash, samples and metrics."""

    name = "Train"

    async def run(self, ctx: NodeContext) -> Stage | None:
        assert ctx.model is not None and ctx.shard is not None and ctx.dataset is not None
        refusal = training_refusal(ctx)
        if refusal:  # elected before the console had its declining vote: never overspend
            log.warning("round %d: not training: %s", self.round, refusal)
            return wait.WaitAggregatedModelsStage(self.round)
        ctx.set_stage("training", self.round)
        work = ctx.round_work(self.round)
        model, ds = ctx.model, ctx.dataset
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        spec = ctx.spec
        device = ctx.device or torch.device("cpu")  # resolved in StartLearning
        dp = None
        if ctx.privacy is not None:
            dp = DPSGD.for_round(
                spec.privacy, seed=spec.seed, node_id=ctx.node_id, round=self.round, device=device
            )
        lr = spec.learning.round_learning_rate(self.round, ctx.snapshot.total_rounds)
        result = await asyncio.to_thread(
            train_local,
            model,
            ctx.shard,
            spec.learning,
            seed=spec.seed,
            round=self.round,
            learning_rate=lr,
            device=device,
            dp=dp,
        )
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        local_eval = await asyncio.to_thread(evaluate, model, ds.x_test, ds.y_test)
        # The model holds the global model again: if this round is not accepted, it is what the
        # next round trains from and what a checkpoint upload sends.
        weights.load_into(model, start)
        if ctx.attack is not None:  # a byzantine trainer, for robustness tests (node/attacks.py)
            trained = ctx.attack.apply(trained, start)
        assert ctx.encoder is not None
        # The update as sent; this node aggregates its own update decoded from the same bytes
        # its peers receive, so every node holds the same fp32 values.
        payloads = await asyncio.to_thread(ctx.encoder.encode, trained, start)
        update = ctx.gossip.decode_payloads(payloads)
        digest = model_hash(payloads)
        work.trained_hash, work.trained_state, work.samples = digest, trained, result.samples
        sent = sum(p.nbytes for p in payloads)
        work.metrics = {
            "train_loss": result.train_loss,
            "train_time": result.train_time,
            "local_test_loss": local_eval.loss,
            "local_accuracy": local_eval.accuracy,
            "update_bytes": float(sent),
            "compression_ratio": raw_bytes(start) / max(1, sent),
            "learning_rate": lr,
        }
        if ctx.privacy is not None:  # the accountant's epsilon after this round's steps
            q, steps = round_cost(result.samples, spec.learning)
            work.metrics["epsilon"] = await asyncio.to_thread(ctx.privacy.spend, q, steps)
        route = ctx.gossip.route_for(self.round, ctx.node_id)
        work.update = ReceivedModel(ctx.node_id, digest, result.samples, update, payloads, route)
        ctx.gossip.store(self.round, work.update)
        await send(
            ctx,
            m.Commit(
                node_id=ctx.node_id,
                round=self.round,
                hash=digest,
                samples=result.samples,
                metrics=work.metrics,
            ),
            f"commit for round {self.round}",
        )
        return gossip.GossipModelStage(self.round)
