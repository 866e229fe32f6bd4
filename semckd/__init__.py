"""semckd: knowledge distillation with SemCKD (Chen et al., AAAI 2021) and the methods it is compared to.

Public API::

    from semckd import SemCKD, FeatureTap, discover_stages, create_model, list_models
    from semckd import build_distiller, list_methods, Distiller
"""

from .features import FeatureTap, discover_stages
from .models import create_model, list_models, register_model
from .semckd import SemCKD
from .methods import Distiller, build_distiller, list_methods, register_method

__version__ = "0.1.0"

__all__ = ["Distiller", "FeatureTap", "SemCKD", "build_distiller", "create_model", "discover_stages",
           "list_methods", "list_models", "register_method", "register_model", "__version__"]
