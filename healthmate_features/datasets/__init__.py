"""Dataset versions: the ProcessedDataset and its content hash (`dataset`), manifests, the bump
rule and diffs (`manifest`), the immutable, semantically versioned registry (`registry`)."""
