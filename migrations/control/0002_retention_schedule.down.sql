DROP TABLE retention_schedules;
