"""Built-in model architectures: ConvNet family, AlexNet, VGG-11, ResNet-18 (CIFAR stem), MLP."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..hookspecs import hookimpl

Norm = Literal["instancenorm", "batchnorm", "layernorm", "groupnorm", "none"]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConvNetModel:
    name = "convnet"
    description = "ConvNet of the distillation literature: depth x (conv3x3, norm, act, 2x2 pool) + linear"

    class Options(_Options):
        width: int = Field(128, ge=1, description="channels per conv layer")
        depth: int = Field(3, ge=1, description="number of conv blocks")
        norm: Norm = "instancenorm"
        act: Literal["relu", "sigmoid", "leakyrelu", "elu"] = "relu"
        pool: Literal["avgpooling", "maxpooling", "none"] = "avgpooling"

    def build(self, options: Options, input_shape, num_classes: int):
        from ..nets import ConvNet

        c, h, w = input_shape
        return ConvNet(c, num_classes, options.width, options.depth, options.act, options.norm, options.pool,
                       (h, w))


class MLPModel:
    name = "mlp"
    description = "Fully connected network on flattened images"

    class Options(_Options):
        hidden: int = Field(128, ge=1)
        depth: int = Field(2, ge=1, description="hidden layers")
        act: Literal["relu", "sigmoid", "leakyrelu", "elu"] = "relu"

    def build(self, options: Options, input_shape, num_classes: int):
        from ..nets import MLP

        c, h, w = input_shape
        return MLP(c * h * w, num_classes, options.hidden, options.depth, options.act)


class AlexNetModel:
    name = "alexnet"
    description = "AlexNet of the RTP/analysis repos: five convs, instance norm, average pooling"

    class Options(_Options):
        norm: Norm = "instancenorm"

    def build(self, options: Options, input_shape, num_classes: int):
        from ..nets import AlexNet

        c, h, w = input_shape
        return AlexNet(c, num_classes, options.norm, (h, w))


class VGG11Model:
    name = "vgg11"
    description = "VGG-11 of the DC/MTT repos (instance norm by default)"

    class Options(_Options):
        norm: Norm = "instancenorm"

    def build(self, options: Options, input_shape, num_classes: int):
        from ..nets import VGG11

        c, h, w = input_shape
        return VGG11(c, num_classes, options.norm, (h, w))


class ResNet18Model:
    name = "resnet18"
    description = "torchvision ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), BatchNorm"

    class Options(_Options):
        norm: Literal["batchnorm", "instancenorm", "groupnorm"] = "batchnorm"

    def build(self, options: Options, input_shape, num_classes: int):
        from ..nets import ResNet18

        return ResNet18(input_shape[0], num_classes, options.norm)


@hookimpl
def register_models(register):
    for cls in (ConvNetModel, MLPModel, AlexNetModel, VGG11Model, ResNet18Model):
        register(cls())
