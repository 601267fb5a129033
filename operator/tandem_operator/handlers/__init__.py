"""Plain functions behind the kopf decorators in `tandem_operator.main`."""
