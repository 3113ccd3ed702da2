"""LightningModules (layer 3). Online RL uses manual optimization (one training_step = one RL
iteration); supervised fine-tuning (the warm start) uses automatic optimization."""
from rlexp.modules.data import IterationDataset, iteration_loader
from rlexp.modules.online import OnlineRLModule
from rlexp.modules.sft import SFTModule

__all__ = ["IterationDataset", "OnlineRLModule", "SFTModule", "iteration_loader"]
