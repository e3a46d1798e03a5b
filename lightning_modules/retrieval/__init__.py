"""Visual place recognition (Saha et al., ACPR 2017): conv features, NetVLAD, PCA whitening, triplet loss."""

from lightning_modules.retrieval.backbones import AlexNetFeatures, SmallFeatures, VGG16Features
from lightning_modules.retrieval.datamodule import RetrievalDataModule
from lightning_modules.retrieval.evaluation import describe, evaluate
from lightning_modules.retrieval.losses import TripletLoss, triplet_loss
from lightning_modules.retrieval.mining import mine_tuples
from lightning_modules.retrieval.model import RetrievalNet, build_retrieval_net
from lightning_modules.retrieval.module import RetrievalModule
from lightning_modules.retrieval.netvlad import NetVLAD, kmeans
from lightning_modules.retrieval.recipe import BaseRecipe
from lightning_modules.retrieval.whitening import PCAWhitening

__all__ = [
    "AlexNetFeatures",
    "BaseRecipe",
    "NetVLAD",
    "PCAWhitening",
    "RetrievalDataModule",
    "RetrievalModule",
    "RetrievalNet",
    "SmallFeatures",
    "TripletLoss",
    "VGG16Features",
    "build_retrieval_net",
    "describe",
    "evaluate",
    "kmeans",
    "mine_tuples",
    "triplet_loss",
]
