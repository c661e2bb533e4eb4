-- The compose demo's SQL Server source: a company database with Change Tracking on, three tables and a
-- few rows. Run by docker/compose.yaml's mssql-init service (sqlcmd -i); safe to run again.
IF DB_ID(N'Visma') IS NULL CREATE DATABASE Visma;
GO
IF NOT EXISTS (SELECT 1 FROM sys.change_tracking_databases WHERE database_id = DB_ID(N'Visma'))
    ALTER DATABASE Visma SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 7 DAYS, AUTO_CLEANUP = ON);
GO
USE Visma;
GO
IF OBJECT_ID(N'Kunde') IS NULL
    CREATE TABLE Kunde (KundeNr INT PRIMARY KEY, Navn NVARCHAR(100) NOT NULL, OrgNr CHAR(9) NULL,
                        Poststed NVARCHAR(60) NULL);
IF OBJECT_ID(N'Bilag') IS NULL
    CREATE TABLE Bilag (BilagNr INT PRIMARY KEY, Dato DATE NOT NULL, Tekst NVARCHAR(200) NULL);
IF OBJECT_ID(N'Postering') IS NULL
    CREATE TABLE Postering (BilagNr INT NOT NULL REFERENCES Bilag (BilagNr), LinjeNr INT NOT NULL,
                            Konto CHAR(4) NOT NULL, Belop DECIMAL(18, 2) NOT NULL, Valuta CHAR(3) NOT NULL,
                            Tekst NVARCHAR(200) NULL, PRIMARY KEY (BilagNr, LinjeNr));
GO
IF NOT EXISTS (SELECT 1 FROM Kunde)
BEGIN
    INSERT INTO Kunde VALUES (1001, N'Fjellstuen Bryggeri AS', '912345678', N'Røros'),
                             (1002, N'Ærøy & Søn Regnskap', '923456789', N'Tromsø');
    INSERT INTO Bilag VALUES (1, '2026-11-02', N'Salg øl, faktura 5001'), (2, '2026-11-03', N'Kjøp malt');
    INSERT INTO Postering VALUES (1, 1, '1500', 12500.00, 'NOK', N'Kundefordring'),
                                 (1, 2, '3000', -10000.00, 'NOK', N'Salgsinntekt'),
                                 (1, 3, '2700', -2500.00, 'NOK', N'Utgående mva 25 %'),
                                 (2, 1, '4000', 8000.00, 'NOK', N'Varekjøp malt'),
                                 (2, 2, '2710', 2000.00, 'NOK', N'Inngående mva'),
                                 (2, 3, '2400', -10000.00, 'NOK', N'Leverandørgjeld');
END
GO
