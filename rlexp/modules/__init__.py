"""LightningModules (layer 3). Online RL uses manual optimization (one training_step = one RL
iteration); the offline algorithms — DPO, rejection-sampling fine-tuning and SFT (also the warm
start) — use automatic optimization (one training_step = one optimizer step)."""
from rlexp.modules.data import IterationDataset, iteration_loader
from rlexp.modules.dpo import DPOModule
from rlexp.modules.offline import OfflineRunMixin
from rlexp.modules.online import OnlineRLModule
from rlexp.modules.preference_data import DatasetError, PreferencePair, generate_preferences, load_preferences
from rlexp.modules.rejection import RejectionSamplingModule
from rlexp.modules.sft import SFTModule
from rlexp.modules.sft_run import SFTRunModule

__all__ = ["DPOModule", "DatasetError", "IterationDataset", "OfflineRunMixin", "OnlineRLModule", "PreferencePair",
           "RejectionSamplingModule", "SFTModule", "SFTRunModule", "generate_preferences", "iteration_loader",
           "load_preferences"]
