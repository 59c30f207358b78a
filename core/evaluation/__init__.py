"""Scoring a model: metrics as plain functions (:mod:`.metrics`), split files (:mod:`.splits`) and scoring a
folder of labelled scans (:mod:`.evaluate`)."""
