"""Dagster resources: data sources, the language model, compute and storage.

Each resource is a thin, typed configuration wrapper around the plain libraries (`peerlens`,
`sae_core`); swapping one per environment (sample vs live data, CPU vs GPU, local disk vs
object storage) is a configuration change, never a code change.
"""

from resources.compute import ComputeResource
from resources.data import CompanyDataResource, EdgarResource, SampleDataResource, UniverseResource, YFinanceResource
from resources.model import LanguageModelResource
from resources.storage import ArtifactStorage, TableIOManager
from resources.training import SaeTrainer

__all__ = [
    "ArtifactStorage",
    "CompanyDataResource",
    "ComputeResource",
    "EdgarResource",
    "LanguageModelResource",
    "SaeTrainer",
    "SampleDataResource",
    "TableIOManager",
    "UniverseResource",
    "YFinanceResource",
]
