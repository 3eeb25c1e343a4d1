"""Log RL episodes (gym-style steps or LLM rollouts), then query and sample them."""

from persisting.trajectory.episode import Episode
from persisting.trajectory.fields import FieldSpec
from persisting.trajectory.schema import STATUSES
from persisting.trajectory.store import TrajectoryStore

__all__ = ["STATUSES", "Episode", "FieldSpec", "TrajectoryStore"]
