"""Human-readable class names of the datasets, stored in exports so predictions read as words.

The tables follow each dataset's official label order; datasets without names here (EMNIST,
Flowers-102, Caltech-101, synthetic) get their label numbers as strings.
"""

from __future__ import annotations

_CIFAR10 = ("airplane automobile bird cat deer dog frog horse ship truck").split()
_CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
    "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
    "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
_CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables "
    "household_electrical_devices household_furniture insects large_carnivores "
    "large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores "
    "medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1 "
    "vehicles_2"
).split()
_FASHION = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_DIGITS = [str(i) for i in range(10)]

CLASS_NAMES: dict[str, list[str]] = {
    "cifar10": _CIFAR10,
    "cifar100": _CIFAR100_FINE,
    "mnist": _DIGITS,
    "digits": _DIGITS,
    "svhn": _DIGITS,
    "fashion_mnist": _FASHION,
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    "stl10": "airplane bird car cat deer dog horse monkey ship truck".split(),
}


def class_names(dataset: str, num_classes: int) -> list[str]:
    """The names of ``dataset``'s classes in label order (label numbers when unknown or when the
    table's length differs from ``num_classes``, e.g. CIFAR-100 with coarse labels)."""
    if dataset == "cifar100" and num_classes == len(_CIFAR100_COARSE):
        return list(_CIFAR100_COARSE)
    names = CLASS_NAMES.get(dataset)
    if names is None or len(names) != num_classes:
        return [str(i) for i in range(num_classes)]
    return list(names)
