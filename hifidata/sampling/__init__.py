"""Sampling: exploration, structure features, stratified selection and uncertainty."""
