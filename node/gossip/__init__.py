"""Update gossip between nodes: a ROUTER that receives pushes and fetches, DEALERs that send.

Each node binds a gossip ROUTER and announces it at join; peers' endpoints come in the
broadcast. A trainer's update (encoded by the run's codec, ``node/compression.py``) reaches
every live peer once: pushed by the trainer itself (``gossip_fanout = 0``), or along a relay
tree (``node/relay.py``): the trainer pushes to K peers, and a node that receives an update
forwards the same bytes to its children in the route the push carries. A node that a dead
relay left out fetches the update (``model_fetch``) from the nearest live holder.

Every received push is decoded with its limits, checked (run, round, trainer, hash, the hash
the trainer committed to the console, the codec's own checks: names, shapes, dtypes, finite
values, index ranges) and answered: ``model_ack`` or an ``error`` that says what was wrong.

A push is bound to its sender: its ``sender`` must be the connection's routing id, and with
CURVE the connection must have authenticated with that sender's key from the console's
broadcast. Only the trainer may push an update before its commit is in the broadcast; a relay's
push (``sender`` != ``trainer``) is taken only when its hash is the one the trainer committed,
so a relay can forward an update but never forge or alter one.

The service is one class, ``GossipService`` (``service.py``: the inbox, waiting for models,
relaying and fetching), over its two socket sides: ``GossipRouter`` (``receive.py``: judging
pushes, answering fetches) and ``GossipDealers`` (``send.py``: pushes and requests to peers).
"""

from node.gossip.received import ReceivedModel
from node.gossip.service import GossipService
from node.gossip.stats import GossipStats

__all__ = ["GossipService", "GossipStats", "ReceivedModel"]
