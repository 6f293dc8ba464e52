"""State that lives across steps and must survive a restart (each with state_dict / load_state_dict)."""

from ssl_kd.memory.bank import MemoryBank, momentum_update
from ssl_kd.memory.ema import EMAModel
from ssl_kd.memory.history import BatchHistory
from ssl_kd.memory.pseudo_label_history import PseudoLabelHistory
from ssl_kd.memory.teacher_logits import TeacherLogitCache

__all__ = ["BatchHistory", "EMAModel", "MemoryBank", "PseudoLabelHistory", "TeacherLogitCache", "momentum_update"]
