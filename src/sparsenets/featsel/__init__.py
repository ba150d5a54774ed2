"""Feature selection with sparse neural networks, as scikit-learn selectors.

Every selector is a ``SelectorMixin`` estimator: ``fit(X, y=None)``, ``transform``,
``get_support``, ``scores_``; it works in a ``Pipeline`` and with ``clone``. See
``docs/feature_selection.md``.

- :class:`QuickSelection` (unsupervised): input-neuron strength of a sparse denoising
  autoencoder trained with SET.
- :class:`WAST` (unsupervised): neuron-importance-guided topology updates after every batch.
- :class:`NeuroFS` (supervised): gradual removal of the weakest input neurons of a sparse MLP.
- :class:`NeuronAttribution` (either): mean |∂output/∂x_j| of a DST-trained sparse network.
"""

from .attribution import NeuronAttribution, encoder_attribution, output_attribution
from .base import SparseNetSelector, er_density, features_to_select, standardize
from .networks import MLP, Autoencoder, input_strength, output_strength
from .neurofs import InputNeuronState, NeuroFS, NeuroFSTopology
from .quickselection import QuickSelection
from .wast import WAST, NeuronImportanceDST, NeuronImportanceState

#: Selector classes by their CLI name.
SELECTORS = {
    "quickselection": QuickSelection,
    "wast": WAST,
    "neurofs": NeuroFS,
    "attribution": NeuronAttribution,
}

__all__ = [
    "MLP", "SELECTORS", "WAST", "Autoencoder", "InputNeuronState", "NeuroFS", "NeuroFSTopology",
    "NeuronAttribution", "NeuronImportanceDST", "NeuronImportanceState", "QuickSelection",
    "SparseNetSelector", "encoder_attribution", "er_density", "features_to_select",
    "input_strength", "output_attribution", "output_strength", "standardize",
]
