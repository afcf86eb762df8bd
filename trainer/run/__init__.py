"""Running a job: the runner, the local launcher, measurement, estimates and quiet logs."""
