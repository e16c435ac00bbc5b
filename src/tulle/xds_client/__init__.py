"""The proxy side of xDS: the ADS client and the code that applies what it receives."""
