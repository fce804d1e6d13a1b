"""The stages of P2PFL's learning workflow, one small class each.

StartLearning -> VoteTrainSet -> Train | WaitAggregatedModels -> GossipModel -> RoundFinished
-> VoteTrainSet (next round) | Cooldown (epoch end: checkpoint upload) -> StartLearning.
Every wait is bounded; a stage that times out re-reads the broadcast state and moves on.

Each stage is one module (with what only it uses); ``console.py`` holds what several stages
read of the broadcast and how they send the console requests. Stages name each other through
their modules (``vote.VoteTrainSetStage``): the workflow is a cycle.
"""

from node.stages.console import send
from node.stages.cooldown import CooldownStage, asked_to_upload, upload_checkpoint
from node.stages.finished import RoundFinishedStage, aggregate_round, resync_global
from node.stages.gossip import GossipModelStage, follow_gossip
from node.stages.start import StartLearningStage, prepare_codec, warm_up_torch
from node.stages.train import TrainStage
from node.stages.vote import VoteTrainSetStage, make_vote, vote_for
from node.stages.wait import WaitAggregatedModelsStage

__all__ = [
    "CooldownStage",
    "GossipModelStage",
    "RoundFinishedStage",
    "StartLearningStage",
    "TrainStage",
    "VoteTrainSetStage",
    "WaitAggregatedModelsStage",
    "aggregate_round",
    "asked_to_upload",
    "follow_gossip",
    "make_vote",
    "prepare_codec",
    "resync_global",
    "send",
    "upload_checkpoint",
    "vote_for",
    "warm_up_torch",
]
