"""Training and evaluating difficulty estimators on labelled routing data (`tandem difficulty`)."""
