"""Analysis passes: they prove or measure facts about a network and return annotations; the network is untouched."""
