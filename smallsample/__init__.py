"""smallsample: learning from small samples with large models, as pure JAX functions."""

from smallsample.episodes import Episode, fixed_episodes, sample_episode, sample_meta_batch
from smallsample.learners.base import Learner, episode_loss, task_loss_and_grad

__version__ = "0.1.0"

__all__ = [
    "Episode",
    "Learner",
    "episode_loss",
    "fixed_episodes",
    "sample_episode",
    "sample_meta_batch",
    "task_loss_and_grad",
]
