"""From a decoded slice to a verdict: crop (roi), preprocessing, the classifier and its card, the decision rule,
the input gate, Grad-CAM and the analysis pipeline that strings them together. Pure: no storage, no screen."""
